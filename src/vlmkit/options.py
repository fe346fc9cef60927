"""Option types shared by the commands (each documented once, so `--help` reads the same everywhere)."""

from __future__ import annotations

from typing import Annotated

import typer

DType = Annotated[
    str, typer.Option(help="Weights dtype: auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.")
]
Device = Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N.")]
AttnImpl = Annotated[
    str, typer.Option(help="Attention kernel: sdpa, eager, or flash_attention_2 (needs flash-attn).")
]
MinPixels = Annotated[
    int | None,
    typer.Option(
        help="Smallest image area in pixels after resizing. Default: saved with the model, else the checkpoint's image-processor value."
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        help="Largest image area in pixels after resizing (fewer pixels = fewer image tokens). Default as --min-pixels."
    ),
]
MinTiles = Annotated[
    int | None,
    typer.Option(
        help="Tiling families (InternVL): fewest 448 px tiles an image is cut into. Default: saved with the model, else the checkpoint's (1). Other families refuse it."
    ),
]
MaxTiles = Annotated[
    int | None,
    typer.Option(
        help="Tiling families (InternVL): most tiles per image, not counting the thumbnail (fewer tiles = fewer image tokens). Default: saved with the model, else the checkpoint's (12). Other families refuse it."
    ),
]
System = Annotated[
    str | None, typer.Option(help="System prompt. Default: the one saved with the model, else the family's.")
]
Fps = Annotated[
    float | None,
    typer.Option(
        help="Video frames sampled per second of video (within the family's min/max frame counts). Default: saved with the model, else 2."
    ),
]
NFrames = Annotated[
    int | None,
    typer.Option(
        help="Sample exactly this many frames per video instead of --fps (at most the video's; Qwen families round it to an even count)."
    ),
]
MaxFrames = Annotated[
    int | None,
    typer.Option(help="Most frames sampled from one video. Default: saved with the model, else 768."),
]
VideoMaxPixels = Annotated[
    int | None,
    typer.Option(
        help="Largest area of one video frame after resizing (frames also share a total-pixel budget). Default: the family's."
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
