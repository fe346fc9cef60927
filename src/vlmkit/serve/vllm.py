"""`vlmkit serve --backend vllm`: the same model, settings and adapters, served by vLLM (GPU machines).

vlmkit does not reimplement vLLM's server; it translates its own options into a `vllm serve`
command line that keeps what peers lose:

- the chat template is the family's own, with the system prompt saved with the model or run
  (or given with --system) put first when a request has none;
- the family's image-processor settings (e.g. pixel limits) go to vLLM as `--mm-processor-kwargs`;
- LoRA adapters are passed as `--lora-modules`; adapters vLLM cannot apply (on the vision tower
  or projector, DoRA, `modules_to_save`, non-LoRA peft types) are refused before vLLM starts,
  never silently dropped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.families import Family
from vlmkit.settings import EncodingSettings, encoding_settings

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts
# The encoding settings `vllm_command` passes on (the chat template's system prompt, the processor's pixel
# limits); `vlmkit serve --backend vllm` refuses the others rather than serve with settings it dropped.
VLLM_PASSES = ("min_pixels", "max_pixels", "system")
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def chat_template_with_system(family: Family, system: str | None) -> str:
    """The family's chat template; with `system`, that prompt is inserted when a request has none."""
    template = family.chat_template
    if system is None:
        return template
    default = json.dumps([{"role": "system", "content": system}])
    return (
        "{%- if not messages or messages[0]['role'] != 'system' %}"
        f"{{%- set messages = {default} + messages %}}"
        "{%- endif %}\n" + template
    )


def check_adapter_for_vllm(name: str, folder: Path, family: Family) -> int:
    """The adapter's LoRA rank; VlmkitError naming the adapter when vLLM could not apply all of it."""
    from safetensors import safe_open

    where = f"--adapters {name}={folder}"
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise VlmkitError(f"{where}: vLLM serves LoRA adapters only, this is {config['peft_type']}")
    if config.get("use_dora"):
        raise VlmkitError(f"{where}: vLLM cannot serve DoRA adapters; merge it (vlmkit export --merge-lora)")
    if config.get("modules_to_save"):
        raise VlmkitError(
            f"{where}: the adapter also saves whole modules ({', '.join(config['modules_to_save'])}), which "
            "vLLM ignores; merge it (vlmkit export --merge-lora) and serve the merged folder"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise VlmkitError(f"{where}: no adapter_model.safetensors")
    vision = family.module_groups.get("vit", ()) + family.module_groups.get("aligner", ())
    with safe_open(weights, "pt") as f:
        names = [k.removeprefix("base_model.model.") for k in f.keys()]
    on_vision = sorted({k.split(".lora_")[0] for k in names if k.startswith(vision)})
    if on_vision:
        raise VlmkitError(
            f"{where}: LoRA on the vision tower ({on_vision[0]} and {len(on_vision) - 1} more) cannot be "
            "served by vLLM; merge it (vlmkit export --merge-lora) and serve the merged folder, or use "
            "--backend transformers"
        )
    return int(config.get("r", 8))


def vllm_command(
    model_dir: Path,
    family: Family,
    settings: dict[str, Any],
    *,
    served_model_name: str,
    adapters: dict[str, Path],
    template_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    allow_media_dir: list[Path] | None = None,
    dtype: str = "auto",
) -> list[str]:
    """The `vllm serve` argument list for the base weights in `model_dir`.

    `settings` are the encoding settings the transformers backend would use (min_pixels,
    max_pixels, system); `adapters` are served under their names (a LoRA --ckpt is one of them).
    The chat template is written to `template_dir`.
    """
    if dtype not in DTYPES:
        raise VlmkitError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    template_dir.mkdir(parents=True, exist_ok=True)
    template_file = template_dir / "chat_template.jinja"
    template_file.write_text(chat_template_with_system(family, settings.get("system")))
    processor_kwargs = family.vllm_processor_kwargs(settings) if family.vllm_processor_kwargs else {}
    args = [
        "vllm", "serve", str(model_dir),
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--dtype", DTYPES[dtype],
        "--chat-template", str(template_file),
        "--mm-processor-kwargs", json.dumps(processor_kwargs),
    ]  # fmt: skip
    if api_key is not None:
        args += ["--api-key", api_key]
    for folder in allow_media_dir or []:
        args += ["--allowed-local-media-path", str(Path(folder).resolve())]
    if adapters:
        ranks = [check_adapter_for_vllm(name, folder, family) for name, folder in adapters.items()]
        rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
        if rank is None:
            raise VlmkitError(f"--adapters: LoRA rank {max(ranks)} is over vLLM's limit of {LORA_RANKS[-1]}")
        args += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(adapters))]
        args += ["--lora-modules", *(f"{name}={folder.resolve()}" for name, folder in adapters.items())]
    return args


def run_vllm(args: list[str]) -> None:
    """Replace this process with `vllm serve` (vLLM must be installed: GPU machines only)."""
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        raise VlmkitError(
            "--backend vllm needs vLLM on a GPU machine (pip install vlmkit[vllm]); use --backend transformers"
        )
    os.execvp(args[0], args)


def translate(
    model: str | None,
    ckpt: str | Path | None,
    adapters: dict[str, Path],
    encoding: EncodingSettings | dict[str, Any] | None,
    served_model_name: str,
    template_dir: Path,
    **options: Any,
) -> list[str]:
    """`vlmkit serve --backend vllm` options -> the `vllm serve` command (no weights are loaded).

    vLLM applies one chat template and one set of pixel limits to every adapter, so an adapter
    whose run saved other settings than the main model's is refused rather than served wrongly.
    A LoRA --ckpt is served as an adapter named `served_model_name` on its base model.
    """
    from vlmkit.loader import load_template, load_tokenizer_and_template, resolve_model

    if not isinstance(encoding, EncodingSettings):
        encoding = encoding_settings(**(encoding or {}))
    files = resolve_model(model, ckpt)
    model_dir, files_dir, family = files.model_dir, files.files_dir, files.family
    tokenizer, template = load_tokenizer_and_template(files, encoding)
    effective = template.settings
    for name, folder in adapters.items():
        if (folder / "preprocessor_config.json").is_file():
            own = load_template(folder, tokenizer, family, encoding).settings
            if own != effective:
                diff = ", ".join(
                    f"{k}={own[k]!r} (served: {effective[k]!r})" for k in own if own[k] != effective[k]
                )
                raise VlmkitError(
                    f"--adapters {name}={folder}: its run used other settings: {diff}; vLLM applies one setting "
                    "to all adapters, so serve it on its own (--ckpt) or pass the settings explicitly"
                )
    if files_dir != model_dir:  # a LoRA checkpoint: the base under its folder name, the run as an adapter
        adapters = {served_model_name: files_dir, **adapters}
        served_model_name = model_dir.name
    return vllm_command(
        model_dir,
        family,
        effective,
        served_model_name=served_model_name,
        adapters=adapters,
        template_dir=template_dir,
        **options,
    )
