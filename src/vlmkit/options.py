"""Option types shared by the commands (each documented once, so `--help` reads the same everywhere).

The encoding options (`vlmkit.settings.EncodingSettings`, one option per field) are declared once in
`ENCODING_OPTIONS` and added to a command by `with_encoding_options`: the command declares one parameter
`encoding: EncodingSettings` and receives the options it stands for as that one value.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from vlmkit.settings import ENCODING_FIELDS, EncodingSettings

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


# -- encoding options: one per `EncodingSettings` field, in its order ------------------------------------

_SAVED = "Default: saved with the model or run (vlmkit.json), else the checkpoint's"
ENCODING_OPTIONS: dict[str, Any] = {
    "min_pixels": Annotated[
        int | None,
        typer.Option(help=f"Smallest image area in pixels after resizing (Qwen families). {_SAVED}. Saved with a run."),
    ],
    "max_pixels": Annotated[
        int | None,
        typer.Option(
            help="Largest image area in pixels after resizing (fewer pixels = fewer image tokens; Qwen families). "
            f"{_SAVED}. Saved with a run."
        ),
    ],
    "fps": Annotated[
        float | None,
        typer.Option(
            help="Video frames sampled per second of video (within the family's min/max frame counts). "
            f"{_SAVED}, else 2. Saved with a run."
        ),
    ],
    "nframes": Annotated[
        int | None,
        typer.Option(
            help="Sample exactly this many frames per video instead of --fps (at most the video's; Qwen families "
            "round it to an even count). Saved with a run."
        ),
    ],
    "max_frames": Annotated[
        int | None,
        typer.Option(help=f"Most frames sampled from one video. {_SAVED}, else 768. Saved with a run."),
    ],
    "min_frames": Annotated[
        int | None,
        typer.Option(help=f"Fewest frames sampled from one video by --fps. {_SAVED}, else 4. Saved with a run."),
    ],
    "video_max_pixels": Annotated[
        int | None,
        typer.Option(
            help="Largest area of one video frame after resizing (frames also share a total-pixel budget). "
            "Default: the family's. Saved with a run."
        ),
    ],
    "min_tiles": Annotated[
        int | None,
        typer.Option(
            help=f"Tiling families (InternVL): fewest 448 px tiles an image is cut into. {_SAVED} (1). Saved with a run."
        ),
    ],
    "max_tiles": Annotated[
        int | None,
        typer.Option(
            help="Tiling families (InternVL): most tiles per image, not counting the thumbnail (fewer tiles = "
            f"fewer image tokens). {_SAVED} (12). Saved with a run."
        ),
    ],
    "system": Annotated[
        str | None,
        typer.Option(help="System prompt for every conversation without one. Default: the one saved with the "
                     "model or run, else the family's. Saved with a run."),
    ],
}
assert tuple(ENCODING_OPTIONS) == ENCODING_FIELDS, "one option per EncodingSettings field"


def _in_panel(option: Any, panel: str | None) -> Any:
    if panel is None:
        return option
    base, info = get_args(option)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[base, info]


def with_encoding_options(panel: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command whose parameter `encoding: EncodingSettings` stands for the encoding options:
    typer sees one option per `EncodingSettings` field in its place (help from `ENCODING_OPTIONS`, in
    `panel` of `--help` when given), and the command gets them as one `EncodingSettings`."""

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        params = []
        for param in signature.parameters.values():
            if param.name == "encoding":
                params += [
                    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                      annotation=_in_panel(option, panel))
                    for name, option in ENCODING_OPTIONS.items()
                ]  # fmt: skip
            else:  # typer passes every option by name
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            encoding = EncodingSettings(**{name: options.pop(name) for name in ENCODING_FIELDS})
            return command(encoding=encoding, **options)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return add
