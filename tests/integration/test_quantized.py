"""GPTQ / AWQ checkpoints (seed 000's `qwen2-vl-7b-instruct-gptq-int4`): without their backend, `infer`, `sft`
and `export` refuse in one line naming the missing package and the vlmkit extra; with it, what cannot work
(full tuning, --quant on top, merging LoRA into quantized weights) is refused. Loading and LoRA on a real
GPTQ checkpoint need gptqmodel, which cannot be imported on these CPU machines (it imports torchvision, which
has no CPU build here): GPU check."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkit.errors import VlmkitError
from vlmkit.models.quantized import check_quantized, check_training, quant_method

GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
BACKEND_MISSING = importlib.util.find_spec("gptqmodel") is None


def quantized_copy(small_model: Path, folder: Path, quantization: dict) -> Path:
    """The tiny model's folder with the `quantization_config` a GPTQ/AWQ export writes into config.json."""
    shutil.copytree(small_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": quantization}))
    return folder


def vlmkit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not BACKEND_MISSING, reason="gptqmodel is installed: the refusal does not apply")
def test_a_gptq_checkpoint_without_its_backend_is_one_line_naming_the_extra(small_model, tmp_path):
    model = quantized_copy(small_model, tmp_path / "Qwen2-VL-2B-Instruct-GPTQ-Int4", GPTQ_CONFIG)
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    missing = (
        "gptqmodel and optimum, which are not installed"
        if importlib.util.find_spec("optimum") is None
        else "gptqmodel, which is not installed"
    )
    runs = {
        "infer": [
            "infer",
            "--model",
            str(model),
            "--input",
            str(data),
            "--output",
            str(tmp_path / "p.jsonl"),
        ],
        "sft": ["sft", "--model", str(model), "--dataset", str(data), "--output-dir", str(tmp_path / "out")],
    }
    for name, args in runs.items():
        result = vlmkit_cli(*args)
        assert result.returncode == 2, (name, result.stderr)
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .endswith(f"a GPTQ checkpoint; loading it needs {missing}: pip install 'vlmkit[gptq]'")
        ), (name, result.stderr)
    assert not (tmp_path / "out").exists()  # refused before a run folder is made
    awq = quantized_copy(small_model, tmp_path / "awq", AWQ_CONFIG)
    with pytest.raises(
        VlmkitError,
        match=r"a AWQ checkpoint; loading it needs gptqmodel, which is not installed: pip install 'vlmkit\[awq\]'",
    ):
        check_quantized(awq, str(awq))


def test_what_cannot_work_on_quantized_weights_is_refused(small_model, tmp_path, monkeypatch):
    model = quantized_copy(small_model, tmp_path / "gptq", GPTQ_CONFIG)
    assert quant_method(model) == "gptq" and quant_method(small_model) is None
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in ("gptqmodel", "optimum") else real_find_spec(name, *a))  # fmt: skip
    assert check_quantized(model, "m") == "gptq"
    check_training(model, "--model m", "lora", None)  # LoRA on top: allowed
    with pytest.raises(VlmkitError, match="--tuner full: --model m is GPTQ-quantized .* use --tuner lora"):
        check_training(model, "--model m", "full", None)
    with pytest.raises(VlmkitError, match="--quant 4bit: --model m is already GPTQ-quantized; drop --quant"):
        check_training(model, "--model m", "lora", "4bit")
    with pytest.raises(
        VlmkitError, match="--merge-lora: the base model of m is GPTQ-quantized .* drop --merge-lora"
    ):
        check_quantized(model, "m", merge_lora=True)
    check_training(small_model, "--model m", "full", None)  # a plain checkpoint: nothing to refuse
