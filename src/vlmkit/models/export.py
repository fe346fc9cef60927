"""`vlmkit export`: a checkpoint -> a complete Hugging Face folder that plain transformers loads.

With `--merge-lora` the adapter is folded into the base weights; without it an adapter
checkpoint is exported as an adapter folder. Either way the folder carries the tokenizer,
image-processor config (with the limits the run trained with written in, so plain transformers and
vLLM resize as training did), chat template and vlmkit.json (pixel limits, system prompt), but
no optimizer or trainer state. It is written next to OUTPUT and renamed into place, so an
interrupted export never leaves a half folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.models.processor_files import write_processor_files
from vlmkit.settings import write_settings


def default_output(ckpt: str | Path, merge_lora: bool) -> Path:
    """Where an export goes without --output: beside the checkpoint, CKPT-merged or CKPT-export."""
    ckpt = Path(ckpt).resolve()
    return ckpt.with_name(f"{ckpt.name}-{'merged' if merge_lora else 'export'}")


def export(
    ckpt: str | Path, output: str | Path | None = None, merge_lora: bool = False, dtype: str = "auto",
    force: bool = False, device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None, offload_folder: str | Path | None = None,
) -> Path:
    """Write `ckpt` (a vlmkit checkpoint) to the new folder `output` (default: `default_output`); returns
    it. An existing non-empty `output` is refused unless `force`, which replaces it once the new folder
    is complete. `device_map`, `max_memory`, `offload_folder`: load (and merge) a model larger than the
    memory at hand across GPUs, CPU and disk (`vlmkit.models.placement`)."""
    import torch

    from vlmkit.models import loader, placement

    output = Path(output) if output is not None else default_output(ckpt, merge_lora)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise VlmkitError(f"--output {output} exists and is not empty; choose a new folder or pass --force")
    placed = placement.from_pretrained_placement(device_map, max_memory, offload_folder)
    files = loader.resolve_model(ckpt=ckpt)
    model_dir, ckpt_dir, settings, family, is_adapter = (
        files.model_dir, files.ckpt_dir, files.settings, files.family, files.is_adapter
    )
    loader.check_weights(model_dir)  # a cut-short file: one line, not a traceback from deep in the loader
    if ckpt_dir != model_dir:
        loader.check_weights(ckpt_dir)  # the adapter's weights
    if dtype == "auto":  # keep the base model's dtype
        saved = json.loads((model_dir / "config.json").read_text()).get("dtype") or "float32"
        torch_dtype = getattr(torch, saved, torch.float32)
    else:
        torch_dtype = loader.torch_dtype(dtype, "cpu")
    model = loader.load_weights(files, dtype=torch_dtype, merge_lora=merge_lora, **placed)

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        loader.load_tokenizer(files).save_pretrained(tmp)
        write_processor_files(family, [ckpt_dir, model_dir], tmp, settings)
        kept = {k: v for k, v in settings.items() if k not in ("step", "tuner")}
        if is_adapter and not merge_lora:
            kept["tuner"] = "lora"
        else:
            kept.pop("base_model", None)
        write_settings(tmp, {**kept, "exported_from": str(Path(ckpt_dir).resolve())})
        if output.is_dir() and not output.is_symlink():
            # with --force the old folder goes only now, when the new one is complete
            if force:
                shutil.rmtree(output)
            else:
                output.rmdir()
        elif output.exists() or output.is_symlink():
            output.unlink()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
