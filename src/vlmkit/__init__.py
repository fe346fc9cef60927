"""vlmkit: chat with, fine-tune, export and serve vision-language models."""

__version__ = "0.1.0"

from vlmkit.errors import DataError, MediaError, VlmkitError
from vlmkit.sample import Sample, to_sample
from vlmkit.settings import EncodingSettings

__all__ = ["DataError", "EncodingSettings", "MediaError", "Sample", "VlmkitError", "__version__", "load", "to_sample"]


def load(model: str | None = None, **kwargs):
    """Load a model folder or hub id (or `ckpt=RUN/checkpoint-N`) for chat and batch inference.

    `vlmkit.load(path, encoding=vlmkit.EncodingSettings(max_pixels=...))` or, the same,
    `vlmkit.load(path, max_pixels=...)`. See `vlmkit.backends.transformers_backend.load` for the options; imported lazily so that `import vlmkit`
    stays fast and torch is only imported when a model is needed.
    """
    from vlmkit.backends.transformers_backend import load as _load

    return _load(model, **kwargs)
