"""Option types shared by the commands (each documented once, so `--help` reads the same everywhere).

Option groups (`vlmkit.groups`: `EncodingSettings`, ...) become a command's options through `with_options`:
the command declares one parameter per group (`encoding: EncodingSettings`) and receives the options it
stands for as that one value.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vlmkit.groups import OptionInfo, field_default, group_options, is_group

DType = Annotated[
    str, typer.Option(help="Weights dtype: auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.")
]
Device = Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N.")]
AttnImpl = Annotated[
    str, typer.Option(help="Attention kernel: sdpa, eager, or flash_attention_2 (needs flash-attn).")
]
DeviceMap = Annotated[
    str | None,
    typer.Option(
        help="Spread the model over devices with accelerate's big-model loading (for models larger than one "
        "GPU): auto or balanced (evenly over the GPUs), balanced_low_0, sequential (fill GPU 0 first); layers "
        "that do not fit go to the CPU, then to disk. Or a JSON object (or .json file) {module name: GPU index, "
        "\"cpu\" or \"disk\"}. Replaces --device.",
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        help="With --device-map auto/balanced/sequential: most memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB "
        "(or a JSON object); layers beyond go to the next device, and to disk last. Default: what is free.",
    ),
]
OffloadFolder = Annotated[
    Path | None,
    typer.Option(
        help="With --device-map: folder for layers offloaded to disk that must be re-saved (another dtype than "
        "the checkpoint's, or not safetensors). Default: a temporary folder, removed at exit.",
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        help="Let transformers run Python code shipped with the checkpoint (auto_map in config.json) of a "
        "supported family. Only for checkpoints you trust; untested (none can be loaded offline). Needed to "
        "chat with Qwen-VL (first generation, e.g. Qwen/Qwen-VL-Chat; inference only)."
    ),
]
Columns = Annotated[
    str | None,
    typer.Option(
        help="Which dataset column is which field, for columns vlmkit does not recognise by name: e.g. "
        "image=img,query=question,response=answer (fields: image, video, query, response, system, boxes, "
        "labels). `vlmkit data check` shows the mapping it uses."
    ),
]
Prompt = Annotated[
    str | None,
    typer.Option(
        help="User turn for column datasets without a question column (seed 003: 'COCO Yes:'). Default by "
        "schema: OCR 'Transcribe the text in the image.', caption 'Describe the image.', grounding "
        "'Find <ref-object>'."
    ),
]
Backend = Annotated[
    str,
    typer.Option(
        help="transformers (here), or vllm: vLLM's engine with the same template, pixel limits and LoRA "
        "adapter (GPU, vllm installed; what it cannot apply is refused)."
    ),
]
TensorParallelSize = Annotated[
    int, typer.Option(help="With --backend vllm: GPUs one model is split across (vLLM tensor parallelism).")
]
VllmArg = Annotated[
    list[str] | None,
    typer.Option(
        help="With --backend vllm: KEY=VALUE for a vLLM engine option vlmkit does not translate (repeatable; "
        "e.g. gpu-memory-utilization=0.8, max-model-len=8192, limit-mm-per-prompt='{\"image\": 4}'). "
        "Options that would override the template, pixel limits, LoRA setup or dtype are refused."
    ),
]


# -- option groups: one CLI option per field --------------------------------------------------------------


def _typer_option(f: dataclasses.Field, info: OptionInfo, hint: Any, panel: str | None) -> tuple[Any, Any]:
    """(annotation, default) of the typer parameter for group field `f`."""
    default = f.default
    if f.default_factory is not dataclasses.MISSING:  # a list: typer's "not given" is None
        hint, default = hint | None, None
    declared = typer.Option(*info.flags, help=info.help, rich_help_panel=info.panel or panel, metavar=info.metavar)
    return Annotated[hint, declared], default


def with_options(
    panels: dict[str, str] | None = None, omit: dict[str, tuple[str, ...]] | None = None, check: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command whose parameters annotated with an option group (`vlmkit.groups`), e.g.
    `loading: LoadOptions`, stand for that group's options: typer sees one option per field in their place
    (`--field-name`, the field's default and help, in `--help` section `panels[parameter]` when given;
    fields in `omit[parameter]` are not options of this command and keep their defaults), and the command
    gets each group as one value, checked (`group.check()`, where it has one) before it runs, unless `check`
    is False (a command that merges the groups with a file first, as sft's `--config`, checks the result).
    Other parameters are typer's as usual."""
    panels, omit = panels or {}, omit or {}

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        params, groups = [], {}
        for param in signature.parameters.values():
            if is_group(param.annotation):
                groups[param.name] = param.annotation
                for f, info, hint in group_options(param.annotation):
                    if f.name in omit.get(param.name, ()):
                        continue
                    annotation, default = _typer_option(f, info, hint, panels.get(param.name))
                    params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                    annotation=annotation))  # fmt: skip
            else:  # typer passes every option by name
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        names = [p.name for p in params]
        assert len(names) == len(set(names)), f"{command.__name__}: two options named alike in {names}"

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            for name, cls in groups.items():
                values = {}
                for f, _, _ in group_options(cls):
                    if f.name in omit.get(name, ()):
                        continue
                    value = options.pop(f.name)
                    if value is None and f.default_factory is not dataclasses.MISSING:  # a list not given
                        value = field_default(f)
                    values[f.name] = value
                group = cls(**values)
                if check and hasattr(group, "check"):
                    group.check()
                options[name] = group
            return command(**options)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return add


def with_encoding_options(panel: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`with_options` for a command whose one group is `encoding: EncodingSettings`."""
    return with_options(panels={"encoding": panel} if panel else None)
