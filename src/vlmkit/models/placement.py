"""Where a model's weights go when one device is not enough: `--device-map` and `--max-memory`.

    kwargs = from_pretrained_placement("auto", "0=20GiB,1=20GiB,cpu=60GiB", offload_folder=None)
    model = loader.load_weights(files, **kwargs)       # accelerate's big-model loading
    device = input_device(model)                        # where the inputs go ("cuda:0", or "cpu")

accelerate spreads the layers over the GPUs (`auto`/`balanced`: evenly, `balanced_low_0`: little on GPU 0,
`sequential`: fill GPU 0 first), then the CPU, then the disk (an offload folder); its hooks move each
layer's inputs to where that layer runs. A model loaded this way is never moved with `.to(device)`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_HELP = "auto, balanced, balanced_low_0, sequential, or a JSON object {module name: GPU index, \"cpu\" or \"disk\"}"


def _check_device(option: str, text: str, device: Any) -> Any:
    """A device of a device map or max-memory key: a GPU index visible here, "cpu" or "disk"."""
    import torch

    if isinstance(device, str) and device.isdigit():
        device = int(device)
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        device = int(device[5:])
    if isinstance(device, int) and not isinstance(device, bool):
        if not 0 <= device < torch.cuda.device_count():
            raise VlmkitError(
                f"{option} {text}: there is no GPU {device} on this machine "
                f"({torch.cuda.device_count()} visible); use cpu or disk, or a visible GPU's index"
            )
        return device
    if device in ("cpu", "disk"):
        return device
    raise VlmkitError(f"{option} {text}: {device!r} is not a device; use a GPU index (0, 1, ...), cpu or disk")


def parse_device_map(value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """`--device-map`: a strategy name, a JSON object (or a .json file holding one) of module name -> device."""
    if value is None or value in STRATEGIES:
        return value
    if isinstance(value, str):
        text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise VlmkitError(f"--device-map {text}: choose {_HELP}") from None
    if not isinstance(value, dict) or not value:
        raise VlmkitError(f"--device-map {json.dumps(value)}: choose {_HELP}")
    return {str(name): _check_device("--device-map", json.dumps(value), d) for name, d in value.items()}


def parse_max_memory(value: str | dict[Any, Any] | None) -> dict[Any, int] | None:
    """`--max-memory`: `0=20GiB,1=20GiB,cpu=60GiB,disk=200GB` or the same as a JSON object -> {device: bytes}."""
    from accelerate.utils import convert_file_size_to_int

    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        if value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise VlmkitError(f"--max-memory {text}: not valid JSON ({e})") from None
        else:
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            if not pairs or any(not sep for _, sep, _ in pairs):
                raise VlmkitError(f"--max-memory {text}: expected DEVICE=SIZE,... e.g. 0=20GiB,cpu=60GiB")
            value = {key.strip(): size.strip() for key, _, size in pairs}
    if not isinstance(value, dict) or not value:
        raise VlmkitError(f"--max-memory {text}: expected DEVICE=SIZE,... e.g. 0=20GiB,cpu=60GiB")
    memory: dict[Any, int] = {}
    for key, size in value.items():
        device = _check_device("--max-memory", text, key)
        try:
            memory[device] = int(size) if str(size).isdigit() else convert_file_size_to_int(str(size))
        except ValueError:
            raise VlmkitError(f"--max-memory {text}: {size!r} is not a size (e.g. 20GiB, 500MB, or bytes)") from None
    return memory


def _temporary_offload_folder() -> str:
    """A folder for the layers offloaded to disk that must be re-saved (other dtype, not safetensors), removed
    when the process ends (safetensors weights offloaded as they are read from the model folder itself)."""
    folder = tempfile.mkdtemp(prefix="vlmkit-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def refuse_launcher() -> None:
    """`--device-map` spreads one copy of the model over the GPUs of one process: refused in each process of
    torchrun / accelerate launch (they set WORLD_SIZE), where every process would spread its own copy."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise VlmkitError(
            f"--device-map: this is process {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']} (torchrun / "
            "accelerate launch); every process would spread its own copy of the model over all the GPUs: run "
            "without a launcher, or drop --device-map"
        )


def check_placement(
    device_map: str | dict[str, Any] | None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> tuple[str | dict[str, Any] | None, dict[Any, int] | None]:
    """The placement options checked and parsed: (device map, max memory in bytes per device); one line
    naming the option when they do not parse or do not go together."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise VlmkitError("--max-memory and --offload-folder place layers for --device-map; give --device-map too")
        return None, None
    refuse_launcher()
    placement = parse_device_map(device_map)
    memory = parse_max_memory(max_memory)
    if isinstance(placement, dict) and memory is not None:
        raise VlmkitError("--max-memory limits what --device-map auto/balanced/sequential place; a JSON map "
                          "places every module itself: leave one out")
    return placement, memory


def from_pretrained_placement(
    device_map: str | dict[str, Any] | None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> dict[str, Any]:
    """The `from_pretrained` arguments (`loader.load_weights(**...)`) of the placement options; {} without
    `--device-map` (the model then loads on the CPU and the caller moves it)."""
    placement, memory = check_placement(device_map, max_memory, offload_folder)
    if placement is None:
        return {}
    kwargs: dict[str, Any] = {"device_map": placement, "offload_folder": str(offload_folder or _temporary_offload_folder())}
    if memory is not None:
        kwargs["max_memory"] = memory
    return kwargs


def input_device(model: Any) -> str:
    """Where a device-mapped model takes its inputs: the first GPU it uses, else the CPU."""
    for device in getattr(model, "hf_device_map", {}).values():
        if isinstance(device, int):
            return f"cuda:{device}"
        if str(device).startswith("cuda"):
            return str(device)
    return "cpu"


def describe(model: Any) -> str:
    """One line on where the modules went: `device map: 3 modules on GPU 0, 2 modules on cpu`."""
    counts = Counter(getattr(model, "hf_device_map", {}).values())
    parts = [
        f"{n} module{'s' * (n != 1)} on {'GPU ' + str(d) if isinstance(d, int) else d}" for d, n in counts.items()
    ]
    return "device map: " + (", ".join(parts) or "one device") + (
        " (disk-offloaded layers are read from disk at every step: slow)" if "disk" in counts else ""
    )


def offloaded_devices(model: Any) -> list[str]:
    """Where accelerate offloaded layers of `model` to (placeholders filled at each forward pass): "disk", and
    "cpu" beside GPUs. A model wholly on the CPU is not offloaded: its layers really are there."""
    devices = set(getattr(model, "hf_device_map", {}).values())
    return sorted(str(d) for d in devices if d == "disk" or (d == "cpu" and len(devices) > 1))


def check_trainable(model: Any) -> None:
    """LoRA on a device-mapped model trains only where every layer really sits on a device."""
    if offloaded := offloaded_devices(model):
        raise VlmkitError(
            f"--device-map: training cannot update layers offloaded to {' and '.join(offloaded)}; give the GPUs "
            "more --max-memory, use more GPUs, or --quant 4bit"
        )


def check_adapter_fits(model: Any, ckpt_dir: Any) -> None:
    """peft cannot put a LoRA adapter onto offloaded layers (it fails deep inside with a KeyError)."""
    if offloaded := offloaded_devices(model):
        raise VlmkitError(
            f"--device-map: the LoRA adapter of {ckpt_dir} cannot be applied to layers offloaded to "
            f"{' and '.join(offloaded)}; give the GPUs more --max-memory, or export the checkpoint with "
            "--merge-lora (without --device-map) and load the merged folder"
        )
