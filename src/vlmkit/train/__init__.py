"""Fine-tuning: `SFTConfig` holds a run's settings, `sft(config)` runs it and returns the run folder.

Imported lazily so that `vlmkit --help` does not load torch.
"""

__all__ = ["SFTConfig", "sft"]


def __getattr__(name: str):
    if name == "SFTConfig":
        from vlmkit.train.config import SFTConfig

        return SFTConfig
    if name == "sft":
        from vlmkit.train.finetune import sft

        return sft
    raise AttributeError(name)
