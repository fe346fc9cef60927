"""Find a model and load it: the one path from `--model` / `--ckpt` to tokenizer, template and weights.

    files = resolve_model(model="Qwen/Qwen2-VL-2B-Instruct")        # or ckpt="runs/.../checkpoint-40"
    tokenizer, template = load_tokenizer_and_template(files, EncodingSettings(max_pixels=200_704))
    model = load_weights(files, dtype=torch.bfloat16)                # the family's auto class (+ LoRA)

Every command goes through here (infer, sft, export, data, serve, the vLLM translation), so a model
folder, a hub id, a checkpoint and a run folder are found, checked and loaded the same way everywhere.
Checkpoint resolution lives here, not in training: inference never imports `vlmkit.train`. The options of
model loading are one group, `LoadOptions` (what `vlmkit.load` and the infer/eval/serve commands take).
This module imports nothing heavy at the top (the families import torch), so the CLI reads `LoadOptions`
from here at once.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.errors import VlmkitError
from vlmkit.groups import option
from vlmkit.settings import EncodingSettings, read_settings

if TYPE_CHECKING:
    from vlmkit.families import Family
    from vlmkit.families.interface import Template

COMPLETE_MARKER = "vlmkit_complete"  # written into a checkpoint folder once its save has finished
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
DTYPES = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class LoadOptions:
    """How a model's weights load: their dtype, the device (or a placement over several: `device_map`,
    `max_memory`, `offload_folder`, see `vlmkit.models.placement`), the attention kernel, and whether the
    checkpoint's own Python code may run. From Python, `device_map` and `max_memory` may also be dicts."""

    dtype: str = option(
        "auto", "Weights dtype: auto (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU; the "
        "same with --backend vllm), bf16, fp16, fp32."
    )
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N.")
    device_map: str | None = option(
        None,
        "Spread the model over devices with accelerate's big-model loading (for models larger than one "
        "GPU): auto or balanced (evenly over the GPUs), balanced_low_0, sequential (fill GPU 0 first); layers "
        "that do not fit go to the CPU, then to disk. Or a JSON object (or .json file) {module name: GPU index, "
        "\"cpu\" or \"disk\"}. Replaces --device.",
    )
    max_memory: str | None = option(
        None,
        "With --device-map auto/balanced/sequential: most memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB "
        "(or a JSON object); layers beyond go to the next device, and to disk last. Default: what is free.",
    )
    offload_folder: Path | None = option(
        None,
        "With --device-map: folder for layers offloaded to disk that must be re-saved (another dtype than "
        "the checkpoint's, or not safetensors). Default: a temporary folder, removed at exit.",
    )
    attn_impl: str = option("sdpa", "Attention kernel: sdpa, eager, or flash_attention_2 (needs flash-attn).")
    trust_remote_code: bool = option(
        False,
        "Let transformers run Python code shipped with the checkpoint (auto_map in config.json) of a "
        "supported family. Only for checkpoints you trust; untested (none can be loaded offline). Needed to "
        "chat with Qwen-VL (first generation, e.g. Qwen/Qwen-VL-Chat; inference only).",
    )

    def check(self) -> None:
        """Refuse, before anything loads, a dtype, device or attention kernel vlmkit does not know, and
        placement options that do not parse or do not go together (`vlmkit.models.placement.check_placement`)."""
        from vlmkit.models import placement

        check_dtype(self.dtype)
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise VlmkitError(f"--device {self.device}: choose one of {', '.join(DEVICES)} (or cuda:N)")
        check_attn(self.attn_impl)
        if self.device_map is not None and self.device != "auto":
            raise VlmkitError(
                f"--device {self.device} and --device-map {self.device_map}: give one (--device-map places the layers)"
            )
        placement.check_placement(self.device_map, self.max_memory, self.offload_folder)

    def placement(self) -> dict[str, Any]:
        """The `from_pretrained` arguments of the placement options (`vlmkit.models.placement`); {} without a device map."""
        from vlmkit.models import placement

        return placement.from_pretrained_placement(self.device_map, self.max_memory, self.offload_folder)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's parts are.

    model_dir: the base weights (a model folder; for a full checkpoint, the checkpoint itself).
    files_dir: tokenizer, image-processor config and vlmkit.json (the checkpoint's own when there is one).
    ckpt_dir: the vlmkit checkpoint (LoRA adapter or full weights), None for a plain model folder.
    family: the model family (from the saved settings, else config.json).
    settings: the checkpoint's saved settings (vlmkit.json), {} for a plain model folder.
    """

    model_dir: Path
    files_dir: Path
    ckpt_dir: Path | None
    family: Family
    settings: dict[str, Any]

    @property
    def is_adapter(self) -> bool:
        return self.ckpt_dir is not None and (self.ckpt_dir / "adapter_config.json").is_file()


# -- finding the folders ----------------------------------------------------------------------------


def resolve_model_dir(model: str | Path, remote_code: bool = False) -> Path:
    """A local model folder, or a hub id (`org/name`) downloaded to the hub cache; one clear line otherwise.
    A checkpoint in an original layout vlmkit converts (OpenGVLab's remote-code InternVL, the original
    Qwen-VL unless `remote_code` is asked for) becomes its converted copy
    (`vlmkit.families.native_model_dir`): every command loads through here."""
    from vlmkit.families import native_model_dir

    return native_model_dir(_find_model_dir(model), remote_code)


def _find_model_dir(model: str | Path) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    # a hub id is exactly `org/name`; anything else, or a path whose first folder exists here, is a path
    looks_like_path = (
        path.exists()
        or str(model).startswith(("./", "../", "/", "~", "."))
        or str(model).count("/") != 1
        or Path(str(model).split("/")[0]).expanduser().is_dir()
    )
    if looks_like_path:
        raise VlmkitError(
            f"no such folder: {model} (--model takes a model folder or a hub id like Qwen/Qwen2-VL-2B-Instruct)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            # *.py and *.tiktoken: a remote-code checkpoint's own code and vocabulary (Qwen-VL); they only
            # run with --trust-remote-code. *.model: InternLM2's sentencepiece vocabulary (InternVL-Chat-V1.5,
            # converted on load).
            snapshot_download(
                str(model),
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.py", "*.tiktoken", "*.model"],
            )
        )
    except Exception as e:  # hub errors come in many types; the message is what matters
        message = " ".join(str(e).split())  # hub errors span lines
        raise VlmkitError(
            f"--model {model}: no such local folder, and no download from the hub ({type(e).__name__}: {message})"
        ) from None


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    found = [
        (int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found) if is_complete(p)]


def check_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder that vlmkit wrote and finished writing; a run folder (RUN, holding checkpoint-N
    folders) gives its newest complete checkpoint. A clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise VlmkitError(f"--ckpt {path}: no such folder")
    if CHECKPOINT_RE.match(path.name) and not is_complete(path):
        raise VlmkitError(
            f"--ckpt {path}: this checkpoint is incomplete (its save was interrupted); use an earlier one"
        )
    if not CHECKPOINT_RE.match(path.name) and not (path / "config.json").is_file():
        if any(CHECKPOINT_RE.match(p.name) for p in path.iterdir()):  # a run folder
            complete = checkpoints(path)
            if not complete:
                raise VlmkitError(f"--ckpt {path}: this run has no complete checkpoint yet")
            return complete[-1]
    return path


def resolve_checkpoint(ckpt: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """A vlmkit checkpoint -> (folder with the base weights, the checkpoint, its saved settings).

    An adapter checkpoint names its base model in vlmkit.json; a full checkpoint is its own base.
    """
    ckpt = check_checkpoint(ckpt)
    settings = read_settings(ckpt)
    if not (ckpt / "adapter_config.json").is_file():
        return ckpt, ckpt, settings
    base = settings.get("base_model")
    if not base:
        base = json.loads((ckpt / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise VlmkitError(f"--ckpt {ckpt}: the adapter does not name its base model; pass --model BASE")
    return resolve_model_dir(base), ckpt, settings


def resolve_model(
    model: str | Path | None = None, ckpt: str | Path | None = None, remote_code: bool = False
) -> ModelFiles:
    """`--model` (a folder or hub id) or `--ckpt` (a vlmkit checkpoint or run folder) -> its `ModelFiles`;
    `remote_code`: a remote-code checkpoint runs its own code instead of being converted on load."""
    from vlmkit.families import family_for_checkpoint, family_for_model_dir

    if (model is None) == (ckpt is None):
        raise VlmkitError("give either --model or --ckpt")
    if ckpt is not None:
        model_dir, ckpt_dir, settings = resolve_checkpoint(ckpt)
        return ModelFiles(model_dir, ckpt_dir, ckpt_dir, family_for_checkpoint(settings.get("family"), model_dir), settings)
    model_dir = resolve_model_dir(model, remote_code)
    return ModelFiles(model_dir, model_dir, None, family_for_model_dir(model_dir), {})


def check_weights(model_dir: Path) -> None:
    """Refuse, with one line, a model folder without weights or with a safetensors file cut short (an
    interrupted download or copy): transformers would fail deep inside with a traceback."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files and not any(model_dir.glob("*.bin")):
        raise VlmkitError(
            f"{model_dir}: no model weights (*.safetensors or *.bin); the folder is incomplete: "
            "download or copy the model again"
        )
    for file in files:
        problem = safetensors_problem(file)
        if problem is not None:
            raise VlmkitError(f"{file}: {problem}; download or copy it again")


def safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file whose size is not the one its header describes (cut short,
    zeroed, or not safetensors at all), or None. Reads the header only, not the tensors."""
    size = file.stat().st_size
    header_size = 0
    try:
        with file.open("rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size)) if 8 + header_size <= size else None
    except (struct.error, ValueError):
        header = None
    try:
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"] if header else []
    except (AttributeError, KeyError, IndexError, TypeError):  # JSON, but not a safetensors header
        header = None
    expected = 8 + header_size + max(ends, default=0) if header is not None else None
    if expected == size:
        return None
    return f"truncated or corrupt safetensors file ({size:,} bytes" + (
        f", its header says {expected:,})" if expected else ")"
    )


# -- tokenizer and template -------------------------------------------------------------------------


def load_tokenizer(files: ModelFiles, trust_remote_code: bool = False) -> Any:
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(files.files_dir, trust_remote_code=trust_remote_code)


def load_template(
    files: ModelFiles | Path, tokenizer: Any, family: Family, encoding: EncodingSettings | None = None
) -> Template:
    """`family`'s template of a folder (`ModelFiles.files_dir`, or an adapter folder) with `encoding`
    given > saved with the folder (vlmkit.json) > the checkpoint's defaults; refuses options `family` does
    not take (`vlmkit.settings.check_encoding`)."""
    folder = files.files_dir if isinstance(files, ModelFiles) else Path(files)
    try:
        return family.load_template(folder, tokenizer, encoding)
    except FileNotFoundError as e:
        raise VlmkitError(
            f"{folder}: {Path(e.filename or '?').name} not found; the model folder is incomplete: copy that "
            "file from the original checkpoint"
        ) from None


def load_tokenizer_and_template(
    files: ModelFiles, encoding: EncodingSettings | None = None, trust_remote_code: bool = False
) -> tuple[Any, Template]:
    """The tokenizer and family template of `files` (no weights: `vlmkit data` answers in seconds)."""
    tokenizer = load_tokenizer(files, trust_remote_code)
    return tokenizer, load_template(files, tokenizer, files.family, encoding)


# -- weights ----------------------------------------------------------------------------------------


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise VlmkitError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")


def resolve_dtype(dtype: str, device: str) -> str:
    """--dtype on `device` ("cuda", "cuda:1", "cpu", ...) as bf16, fp16 or fp32: auto is bf16 on a GPU that
    supports it, fp16 on an older GPU, fp32 elsewhere. Both backends take it from here, so `auto` runs the
    same dtype with transformers and with vLLM (vLLM's own auto would run bf16 on a CPU with avx512_bf16)."""
    import torch

    check_dtype(dtype)
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def torch_dtype(dtype: str, device: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolve_dtype(dtype, device)]


def pick_device(device: str) -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise VlmkitError(f"--device {device}: choose one of {', '.join(DEVICES)} (or cuda:N)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmkitError(
            f"--device {device}: no CUDA GPU is visible to torch on this machine; use --device cpu"
        )
    return device


def check_attn(attn_impl: str) -> None:
    if attn_impl not in ATTN_IMPLS:
        raise VlmkitError(f"--attn-impl {attn_impl}: choose one of {', '.join(ATTN_IMPLS)}")
    if attn_impl == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise VlmkitError(
                "--attn-impl flash_attention_2 needs the flash-attn package (pip install vlmkit[flash]) "
                "and a CUDA GPU; use --attn-impl sdpa"
            )


def check_trust(files: ModelFiles, trust_remote_code: bool) -> None:
    if files.family.remote_code and not trust_remote_code:
        convert = (
            f"; or convert it to run without it: vlmkit convert --model {files.model_dir} --output DIR"
            if files.family.convert_checkpoint is not None
            else ""
        )
        raise VlmkitError(
            f"{files.model_dir}: {files.family.name} checkpoints run Python code shipped with the model; "
            "pass --trust-remote-code (trust_remote_code=True) if you trust its source (untested in vlmkit)"
            + convert
        )


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Around a peft wrap or adapter load: peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`
    every time, and its FutureWarning is about peft's code, not the user's model or checkpoint."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


class _CpuKernelFallbacks(logging.Filter):
    """Drops transformers' "`causal_conv1d_fn` is falling back to its reference PyTorch implementation" lines
    (Qwen3.5's linear-attention layers, once per kernel): the kernels it names (causal-conv1d,
    flash-linear-attention) run on GPUs only, so on a machine without one the line names nothing to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "falling back to its reference PyTorch implementation" not in record.getMessage()


def quiet_cpu_kernel_fallbacks() -> None:
    import torch

    hub_kernels = logging.getLogger("transformers.integrations.hub_kernels")
    if not torch.cuda.is_available() and not any(isinstance(f, _CpuKernelFallbacks) for f in hub_kernels.filters):
        hub_kernels.addFilter(_CpuKernelFallbacks())


def fill_generation_tokens(hf_model: Any) -> None:
    """Give the generation config the bos/pad ids its model config declares where it has none, as transformers
    does for a checkpoint without generation_config.json. InternVL folders converted before issue 28 have no
    bos_token_id there, and the Trainer's `align_special_tokens` then "updates" it from the tokenizer with a
    "new PAD/BOS/EOS tokens" warning on every sft although config and tokenizer agree. An id the tokenizer
    really disagrees with still warns there."""
    generation = getattr(hf_model, "generation_config", None)
    if generation is None:
        return
    text = hf_model.config.get_text_config()
    for name in ("bos_token_id", "pad_token_id"):
        if getattr(generation, name, None) is None and getattr(text, name, None) is not None:
            setattr(generation, name, getattr(text, name))


def load_weights(
    files: ModelFiles,
    *,
    dtype: Any = None,
    attn_impl: str | None = None,
    trust_remote_code: bool = False,
    adapter: bool = True,
    merge_lora: bool = False,
    **from_pretrained: Any,
) -> Any:
    """The transformers model of `files` through its family's `auto_class`, with the checkpoint's LoRA
    adapter applied (`adapter`; and merged with `merge_lora`). `dtype`: a torch dtype, None for the
    checkpoint's; `attn_impl` None leaves transformers' choice; `from_pretrained`: further arguments of
    `from_pretrained` (quantization_config, ...; device placement belongs here too: `device_map`,
    `max_memory`, `offload_folder` from `vlmkit.models.placement`). Without a `device_map` the model stays on the
    CPU: the caller moves it."""
    import transformers

    from vlmkit.models.quantized import check_quantized

    check_quantized(
        files.model_dir, str(files.model_dir), merge_lora=merge_lora and adapter and files.is_adapter
    )
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars (export, the Python API)
    quiet_cpu_kernel_fallbacks()
    if merge_lora and not files.is_adapter:  # accepted silently, it would do nothing
        print(f"warning: --merge-lora does nothing: {files.model_dir} is a full model, not a LoRA adapter "
              "checkpoint", file=sys.stderr)  # fmt: skip
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **from_pretrained}
    if dtype is not None:
        kwargs["dtype"] = dtype
    # Remote code may not declare sdpa support, and transformers refuses an explicit request it cannot
    # honour; left unset, transformers takes sdpa where the code supports it and eager otherwise.
    if attn_impl is not None and not (files.family.remote_code and attn_impl == "sdpa"):
        kwargs["attn_implementation"] = attn_impl
    # accelerate warns that offloaded parameters sit on the meta device: that is what offloading means here
    # (`vlmkit.models.placement.describe` says where the layers went)
    offload_log = logging.getLogger("accelerate.big_modeling")
    level = offload_log.level
    offload_log.setLevel(logging.ERROR)
    try:
        hf_model = getattr(transformers, files.family.auto_class).from_pretrained(files.model_dir, **kwargs)
    finally:
        offload_log.setLevel(level)
    fill_generation_tokens(hf_model)
    if adapter and files.is_adapter:
        from peft import PeftModel

        from vlmkit.models.placement import check_adapter_fits

        check_adapter_fits(hf_model, files.ckpt_dir)

        with peft_quietly():
            hf_model = PeftModel.from_pretrained(hf_model, files.ckpt_dir)
        if merge_lora:
            hf_model = hf_model.merge_and_unload()
    return hf_model
