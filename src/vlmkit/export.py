"""`vlmkit export`: a checkpoint -> a complete Hugging Face folder that plain transformers loads.

With `--merge-lora` the adapter is folded into the base weights; without it an adapter
checkpoint is exported as an adapter folder. Either way the folder carries the tokenizer,
image-processor config, chat template and vlmkit.json (pixel limits, system prompt), but
no optimizer or trainer state. It is written next to OUTPUT and renamed into place, so an
interrupted export never leaves a half folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from vlmkit.errors import VlmkitError
from vlmkit.settings import write_settings

CARRIED_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.jinja")


def export(ckpt: str | Path, output: str | Path, merge_lora: bool = False, dtype: str = "auto") -> Path:
    """Write `ckpt` (a vlmkit checkpoint) to the new folder `output`; returns it."""
    import torch
    from transformers import AutoTokenizer

    from vlmkit.model import _load_weights, _torch_dtype, resolve_checkpoint

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise VlmkitError(f"--output {output} exists and is not empty; choose a new folder")
    model_dir, ckpt_dir, settings = resolve_checkpoint(ckpt)
    is_adapter = (ckpt_dir / "adapter_config.json").is_file()
    if dtype == "auto":  # keep the base model's dtype
        saved = json.loads((model_dir / "config.json").read_text()).get("dtype") or "float32"
        torch_dtype = getattr(torch, saved, torch.float32)
    else:
        torch_dtype = _torch_dtype(dtype, "cpu")
    model = _load_weights(model_dir, ckpt_dir, merge_lora, dtype=torch_dtype)

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(ckpt_dir).save_pretrained(tmp)
        for name in CARRIED_FILES:
            for source in (ckpt_dir / name, model_dir / name):
                if source.is_file():
                    shutil.copy(source, tmp / name)
                    break
        kept = {k: v for k, v in settings.items() if k not in ("step", "tuner")}
        if is_adapter and not merge_lora:
            kept["tuner"] = "lora"
        else:
            kept.pop("base_model", None)
        write_settings(tmp, {**kept, "exported_from": str(Path(ckpt_dir).resolve())})
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
