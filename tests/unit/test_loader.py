"""vlmkit.models.loader: a model folder, a checkpoint and a run folder are found and loaded one way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkit.errors import VlmkitError
from vlmkit.models.loader import COMPLETE_MARKER, load_tokenizer_and_template, load_weights, resolve_model


def adapter_checkpoint(run: Path, step: int, base: Path, complete: bool = True) -> Path:
    """What `vlmkit sft --tuner lora` leaves in RUN/checkpoint-STEP, as far as finding it goes."""
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (ckpt / "vlmkit.json").write_text(json.dumps({"family": "qwen2-vl", "base_model": str(base), "max_pixels": 5000}))
    if complete:
        (ckpt / COMPLETE_MARKER).write_text("{}")
    return ckpt


def test_model_folder(small_model):
    files = resolve_model(str(small_model))
    assert (files.model_dir, files.files_dir, files.ckpt_dir) == (small_model, small_model, None)
    assert files.family.name == "qwen2-vl" and not files.is_adapter
    tokenizer, template = load_tokenizer_and_template(files)
    assert template.tokenizer is tokenizer
    model = load_weights(files)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"  # the family's auto class


def test_checkpoint_and_run_folders(small_model, tmp_path):
    run = tmp_path / "run"
    older = adapter_checkpoint(run, 2, small_model)
    adapter_checkpoint(run, 4, small_model, complete=False)  # its save was cut short
    files = resolve_model(ckpt=older)
    assert (files.model_dir, files.files_dir, files.ckpt_dir) == (small_model, older, older)
    assert files.is_adapter and files.settings["max_pixels"] == 5000
    assert resolve_model(ckpt=run).ckpt_dir == older  # a run folder: its newest complete checkpoint
    with pytest.raises(VlmkitError, match="checkpoint-4: this checkpoint is incomplete"):
        resolve_model(ckpt=run / "checkpoint-4")
    with pytest.raises(VlmkitError, match="give either --model or --ckpt"):
        resolve_model(str(small_model), ckpt=older)
    empty = tmp_path / "empty_run"
    (empty / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(VlmkitError, match="has no complete checkpoint"):
        resolve_model(ckpt=empty)


def test_full_checkpoint_is_its_own_base(small_model):
    files = resolve_model(ckpt=small_model)  # a model folder given as --ckpt: full weights, no adapter
    assert files.model_dir == files.files_dir == files.ckpt_dir == small_model and not files.is_adapter


def test_inference_does_not_import_training():
    code = (
        "import sys, vlmkit.backends.transformers_backend, vlmkit.models.loader, vlmkit.infer.batch, vlmkit.models.export, vlmkit.serve.server, vlmkit.backends.vllm_args, vlmkit.backends.vllm_offline;"
        "print([m for m in sys.modules if m.startswith('vlmkit.train')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
