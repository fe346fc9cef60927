"""Pre-quantized checkpoints (GPTQ, AWQ: e.g. Qwen2-VL-7B-Instruct-GPTQ-Int4, Qwen2.5-VL-7B-Instruct-AWQ).

    method = quant_method(model_dir)                  # "gptq", "awq" or None, from config.json
    check_quantized(model_dir, "--model M")           # one line when the backend is missing

transformers loads them through its own quantizers, whose kernels come from GPT-QModel (`gptqmodel`; GPTQ
also needs `optimum`): the optional extras `vlmkit[gptq]` and `vlmkit[awq]`. On top of a loaded checkpoint,
vlmkit infers, trains LoRA adapters (the quantized weights stay frozen: `--tuner full` and `--quant` are
refused) and exports the adapter; merging LoRA into quantized weights is refused (the result would need
dequantizing), so `export --merge-lora` and `infer --merge-lora` say to keep the adapter instead.

gptqmodel has torch kernels that run on CPU, but it cannot be imported on vlmkit's CPU test machines: it
imports torchvision at import time (no CPU build of torchvision there), and its newest release needs torch
2.14. So here only the refusals are tested; loading, inference, LoRA and the adapter export on a GPTQ/AWQ
checkpoint belong to the GPU check.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from vlmkit.errors import VlmkitError

# quant_method -> (the packages transformers 5 needs to load it, the vlmkit extra that installs them)
BACKENDS = {"gptq": (("gptqmodel", "optimum"), "gptq"), "awq": (("gptqmodel",), "awq")}


def quant_method(model_dir: str | Path) -> str | None:
    """The checkpoint's `quantization_config.quant_method` (lower case), or None when it has none."""
    config_file = Path(model_dir) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    method = (config.get("quantization_config") or {}).get("quant_method")
    return str(method).lower() if method else None


def check_quantized(model_dir: str | Path, what: str, merge_lora: bool = False) -> str | None:
    """The checkpoint's GPTQ/AWQ method (None for others); refuses, in one line naming `what` (the option
    and value), a checkpoint whose backend is not installed, and merging LoRA into its quantized weights."""
    method = quant_method(model_dir)
    if method not in BACKENDS:
        return None
    packages, extra = BACKENDS[method]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise VlmkitError(
            f"{what}: a {method.upper()} checkpoint; loading it needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'vlmkit[{extra}]'"
        )
    if merge_lora:
        raise VlmkitError(
            f"--merge-lora: the base model of {what} is {method.upper()}-quantized and LoRA cannot be merged into "
            "quantized weights; drop --merge-lora (the adapter is applied on the quantized model)"
        )
    return method


def check_training(model_dir: str | Path, what: str, tuner: str, quant: str | None) -> None:
    """`vlmkit sft` on a GPTQ/AWQ checkpoint: LoRA only, and no bitsandbytes --quant on top."""
    method = check_quantized(model_dir, what)
    if method is None:
        return
    if tuner != "lora":
        raise VlmkitError(
            f"--tuner {tuner}: {what} is {method.upper()}-quantized and its weights cannot be trained; "
            "use --tuner lora (LoRA adapters on the quantized model)"
        )
    if quant:
        raise VlmkitError(f"--quant {quant}: {what} is already {method.upper()}-quantized; drop --quant")
