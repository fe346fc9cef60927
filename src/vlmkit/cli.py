"""The `vlmkit` command line. Each command is a thin function over the Python API.

Heavy libraries (torch, transformers) are imported inside the commands, so `--help`
and mistakes in options answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vlmkit.errors import VlmkitError
from vlmkit.options import (
    AttnImpl,
    Backend,
    Columns,
    Device,
    DeviceMap,
    DType,
    MaxMemory,
    OffloadFolder,
    Prompt,
    TensorParallelSize,
    TrustRemoteCode,
    VllmArg,
    with_encoding_options,
)
from vlmkit.settings import EncodingSettings

app = typer.Typer(
    name="vlmkit",
    help="Chat with, fine-tune, export and serve vision-language models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, "
    "InternVL, LLaVA, LLaVA-NeXT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def global_options(
    image_cache_mb: Annotated[
        float,
        typer.Option(
            min=0,
            help="Memory (MiB per process) for resized images of local files, so an image asked about in several "
            "rows is decoded once; 0 turns it off. Applies to this run only.",
        ),
    ] = 64,
) -> None:
    """Options for every command, given before it (`vlmkit --image-cache-mb 0 sft ...`)."""
    if image_cache_mb != 64:
        from vlmkit.media import set_image_cache_mb

        set_image_cache_mb(image_cache_mb)


@app.command("tiny-model")
def tiny_model(
    family: Annotated[str, typer.Argument(help="Model family, as `vlmkit families` lists them: qwen2-vl, qwen2.5-vl, qwen3-vl, internvl, ...; or an original (remote-code) layout, for `vlmkit convert`: internvl-remote (OpenGVLab's InternVL-Chat-V1.5: InternLM2), internvl2-remote (InternVL2-1B: Qwen2), always with the 600-token BPE.")],
    output_dir: Annotated[Path, typer.Argument(help="New folder to write the model to.")],
    small_vocab: Annotated[
        bool,
        typer.Option(
            help="Train a 600-token BPE instead of rebuilding the real Qwen2 vocabulary (faster, but token ids differ from real checkpoints)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write a tiny randomly initialised model of FAMILY (real chat template, image-processor config and
    special-token ids) to OUTPUT_DIR, for tests and trying vlmkit offline."""
    from vlmkit.families import family_by_name, family_for_model_dir, original_layout
    from vlmkit.tiny import build_tiny_model

    layout = original_layout(family)
    if layout is not None:  # a checkpoint as its authors ship it (remote code), for `vlmkit convert`
        path = layout.build_tiny(output_dir, seed=seed)
        typer.echo(f"wrote a tiny {layout.name} checkpoint (original layout, remote code not included) to {path}")
        return
    wanted = family_by_name(family)
    path = build_tiny_model(wanted, output_dir, small_vocab=small_vocab, seed=seed)
    written = family_for_model_dir(path)
    if written is wanted:
        typer.echo(f"wrote a tiny {wanted.name} model to {path}")
    else:  # an original checkpoint layout, as published (Qwen-VL)
        typer.echo(f"wrote a tiny {wanted.name} model in its original layout ({written.name}) to {path}; "
                   f"`vlmkit convert --model {path} --output DIR` makes the {wanted.name} folder")  # fmt: skip


@app.command("convert")
def convert_command(
    model: Annotated[Path, typer.Option(help="The checkpoint folder in its original layout (e.g. OpenGVLab's InternVL-Chat-V1-5).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the converted model.")],
    force: Annotated[bool, typer.Option(help="Replace the output folder if it exists and is not empty.")] = False,
) -> None:
    """Convert a remote-code checkpoint (OpenGVLab's InternVL: model_type internvl_chat) into the
    transformers-native layout (InternVLForConditionalGeneration, as the -hf repos), with tokenizer, chat
    template, image-processor config and vlmkit.json, so every vlmkit command, plain transformers and vLLM
    load it without --trust-remote-code. (vlmkit infer/sft/serve --model also convert on load, once, into
    MODEL-vlmkit-hf beside it.)"""
    from vlmkit.families import family_for_model_dir, original_layout, read_model_config

    model_type = read_model_config(model).get("model_type")
    layout = original_layout(model_type) if isinstance(model_type, str) else None
    if layout is not None:
        path = layout.convert(model, output, force=force)
        typer.echo(f"converted {model} to {path}")
        return
    source = family_for_model_dir(model)  # a family whose original layout converts by itself (Qwen-VL)
    if source.convert_checkpoint is None:
        raise VlmkitError(
            f"{model}/config.json: model_type {model_type!r} has no conversion; vlmkit converts OpenGVLab's "
            "remote-code InternVL checkpoints (internvl_chat) and Qwen-VL's (qwen)"
        )
    path = source.convert_checkpoint(model, output, force=force)
    typer.echo(f"wrote a {family_for_model_dir(path).name} model converted from {source.name} to {path}")


@app.command("families")
def families() -> None:
    """List the supported model families and what each supports."""
    from vlmkit.families import FAMILIES

    for f in FAMILIES.values():
        pre = f.preprocessor_config
        size = pre.get("size", {})
        vision = f.vision or (
            f"patch={pre.get('patch_size')} merge={pre.get('merge_size')} "
            f"pixels={size.get('shortest_edge')}..{size.get('longest_edge')}"
        )
        options = " ".join("--" + o.replace("_", "-") for o in f.resolution_options) or "none"
        grounding = f.box_format.space if f.box_format is not None else "none"
        typer.echo(
            f"{f.name:<14} model_type={f.model_type:<11} inputs={'+'.join(f.supports):<12} "
            f"grounding={grounding:<14} {vision}  (resolution options: {options})  {f.description}"
        )
        for layout in f.original_layouts:  # checkpoints vlmkit converts to this family (vlmkit convert)
            typer.echo(
                f"  {layout.name:<10} model_type={layout.model_type}: {layout.checkpoints}; converted to {f.name} "
                f"by `vlmkit convert` or on load; every command works on them; verified: {layout.verified}"
            )


@app.command("infer")
@with_encoding_options()
def infer(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model folder or hub id (e.g. Qwen/Qwen2-VL-2B-Instruct)."),
    ] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option(
            help="A vlmkit checkpoint (RUN/checkpoint-N): loads its base model and adapter with the run's own template and resolution settings."
        ),
    ] = None,
    merge_lora: Annotated[
        bool, typer.Option(help="Merge the LoRA adapter into the weights on load (faster generation).")
    ] = False,
    val: Annotated[
        bool,
        typer.Option(help="With --ckpt: batch inference over the run's validation set (from its args.json)."),
    ] = False,
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="Dataset for batch inference, as sft's --dataset (a .json/.jsonl/.parquet/.arrow/.csv file, a "
            "folder, or hf::org/name). Without it: interactive chat.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where batch inference writes one JSON line per input row. Default: INPUT with .preds.jsonl "
            "(with --val: CKPT.val.preds.jsonl beside the checkpoint, one file per checkpoint).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows generated together in batch inference.")] = 8,
    media_root: Annotated[
        Path | None,
        typer.Option(
            help="Extra folder to resolve relative image paths against (after the dataset file's folder)."
        ),
    ] = None,
    columns: Columns = None,
    prompt: Prompt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens generated per reply.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic); > 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens; 0 = no limit.")] = 0,
    repetition_penalty: Annotated[float, typer.Option(help="> 1 discourages repeating tokens.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    encoding: EncodingSettings = EncodingSettings(),
    dtype: DType = "auto",
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    offload_folder: OffloadFolder = None,
    attn_impl: AttnImpl = "sdpa",
    draw: Annotated[
        Path | None,
        typer.Option(
            help="Folder to save every input image to with the boxes of the model's reply drawn and labelled "
            "(batch: rowNNNNN_imageK.png; chat: chatNNN_imageK.png)."
        ),
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
    backend: Backend = "transformers",
    tensor_parallel_size: TensorParallelSize = 1,
    vllm_arg: VllmArg = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Chat: do not print the model and resolution settings at start nor each image's sizes and token count.",
        ),
    ] = False,
) -> None:
    """Chat with a model interactively, or run batch inference over a dataset file with --input.

    In the chat, each <image> or <video> in your message asks for a path or URL; 'clear' resets the
    history; 'exit', 'quit' or end of input leave. Piped input works, so chats can be scripted."""
    from vlmkit.data.columns import parse_columns
    from vlmkit.infer import run_batch, run_chat
    from vlmkit.model import GenerationOptions, load
    from vlmkit.vllm_args import refuse_vllm_options

    options = GenerationOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    options.kwargs()  # validate before the slow model load
    if val:
        input = _val_input(ckpt, input)
        output = output or _val_output(ckpt)
        columns, prompt = _run_columns(ckpt, columns, prompt)
    if backend not in ("transformers", "vllm"):
        raise VlmkitError(f"--backend {backend}: choose transformers or vllm")
    refuse_vllm_options(backend, tensor_parallel_size, vllm_arg)
    if input is not None:
        from vlmkit.batch_output import join_ranks

        join_ranks(device, backend)  # under torchrun: before the model loads, so each rank takes its own GPU
    if backend == "vllm":
        from vlmkit.vllm_args import VLLM_PASSES
        from vlmkit.vllm_offline import load_vllm, refuse_for_vllm

        if input is None:
            raise VlmkitError("--backend vllm runs batch inference (--input FILE); to chat, use vlmkit serve --backend vllm")
        refuse_for_vllm(
            merge_lora=merge_lora, device=None if device == "auto" else device, device_map=device_map,
            attn_impl=None if attn_impl == "sdpa" else attn_impl,
            **{k: v for k, v in encoding.given().items() if k not in VLLM_PASSES},
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        vlm = load_vllm(
            model, ckpt=ckpt, dtype=dtype, tensor_parallel_size=tensor_parallel_size, vllm_args=vllm_arg,
            encoding=encoding,
        )  # fmt: skip
    else:
        vlm = load(
            model,
            ckpt=ckpt,
            merge_lora=merge_lora,
            dtype=dtype,
            device=device,
            attn_impl=attn_impl,
            encoding=encoding,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
        )
        if device_map is not None:
            from vlmkit.placement import describe

            typer.echo(describe(vlm.model), err=True)
    if input is None:
        run_chat(vlm, options, draw_dir=draw, quiet=quiet, system_option=encoding.system)
        return
    output = output or _default_output(input)
    counts = run_batch(
        vlm,
        input,
        output,
        options,
        batch_size=batch_size,
        media_root=media_root,
        columns=parse_columns(columns),
        prompt=prompt,
        progress=sys.stderr.isatty(),
        draw_dir=draw,
    )
    from vlmkit.batch_output import is_main_process

    if is_main_process():  # one line for a torchrun run, not one per rank
        typer.echo(f"wrote {counts['ok'] + counts['failed']} rows to {output} ({counts['failed']} failed)")


from vlmkit.data.commands import app as data_app  # noqa: E402
from vlmkit.eval.command import eval_command  # noqa: E402  (a light module: options only)
from vlmkit.train.command import ManyValuesCommand, sft_command  # noqa: E402  (a light module: options only)

app.command("sft", cls=ManyValuesCommand, context_settings={"help_option_names": ["-h", "--help"]})(sft_command)
app.command("eval")(eval_command)
app.add_typer(
    data_app, name="data", help="Check a dataset before training, preview rows as the model sees them, or encode it into the encode cache."
)


@app.command("demo")
def demo(
    output_dir: Annotated[
        Path, typer.Option(help="Where the demo's model, data and run go (a new timestamped folder).")
    ] = Path("runs/demo"),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the training progress bar.")
    ] = True,
    quick: Annotated[
        bool,
        typer.Option(
            help="Every step of the demo at toy size (64 training rows, 16 held-out, 8 training steps; about "
            "10 s) to check an install; the accuracy figures then mean nothing."
        ),
    ] = False,
) -> None:
    """Offline, on a CPU, in a few minutes: build a tiny Qwen2-VL, make a coloured-shapes dataset, measure
    held-out accuracy, fine-tune with `vlmkit sft`, measure again and chat with the result."""
    from vlmkit.demo import QUICK_RECIPE, run_demo

    run_demo(output_dir, recipe=QUICK_RECIPE if quick else None, progress=progress)


def _default_output(input: Path) -> Path:
    """INPUT.preds.jsonl beside a dataset file or folder; ORG_NAME.preds.jsonl here for a hub id."""
    spec = str(input).split("#")[0]
    if spec.startswith(("hf::", "ms::")):
        return Path(spec[4:].split(":")[0].split("@")[0].replace("/", "_") + ".preds.jsonl")
    path = Path(spec)
    return path.with_suffix(".preds.jsonl") if path.is_file() else path.with_name(path.name + ".preds.jsonl")


def _val_output(ckpt: Path) -> Path:
    """RUN/checkpoint-N.val.preds.jsonl: one predictions file per checkpoint, beside it (not in it: a later
    save may rotate the checkpoint away), so comparing checkpoints never overwrites one's predictions."""
    ckpt = Path(ckpt).resolve()
    return ckpt.with_name(f"{ckpt.name}.val.preds.jsonl")


def _run_columns(ckpt: Path, columns: str | None, prompt: str | None) -> tuple[str | None, str | None]:
    """--columns and --prompt of the run that wrote `ckpt`, unless given here (they read its val data)."""
    import json

    args = json.loads((Path(ckpt).parent / "args.json").read_text())
    return columns if columns is not None else args.get("columns"), prompt if prompt is not None else args.get("prompt")


def _val_input(ckpt: Path | None, given: Path | None) -> Path:
    """The validation file of the run that wrote `ckpt` (seed 000's --load_dataset_config): the rows that
    --split-ratio held out (RUN/val_split.jsonl), else its --val-dataset (args.json keeps it absolute)."""
    import json

    if ckpt is None or given is not None:
        raise VlmkitError("--val needs --ckpt and no --input")
    run_dir = Path(ckpt).resolve().parent
    args_file = run_dir / "args.json"
    if not args_file.is_file():
        raise VlmkitError(f"--val: {args_file} not found; is {ckpt} a checkpoint of a vlmkit run?")
    if (run_dir / "val_split.jsonl").is_file():
        return run_dir / "val_split.jsonl"
    args = json.loads(args_file.read_text())
    if not args.get("val_dataset"):
        raise VlmkitError(
            f"--val: the run {run_dir} had no --val-dataset or --split-ratio (use --input FILE instead)"
        )
    if len(args["val_dataset"]) > 1 or "#" in args["val_dataset"][0]:
        raise VlmkitError("--val supports a run with one plain --val-dataset file; pass --input FILE instead")
    return Path(args["val_dataset"][0])


@app.command("export")
def export_command(
    ckpt: Annotated[Path, typer.Option(help="The checkpoint to export (RUN/checkpoint-N).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="New folder to write. Default: beside the checkpoint, CKPT-merged (with --merge-lora) or CKPT-export.",
        ),
    ] = None,
    merge_lora: Annotated[
        bool,
        typer.Option(
            help="Fold the LoRA adapter into the base weights (a plain model folder). Without it, an adapter checkpoint is exported as an adapter."
        ),
    ] = False,
    dtype: Annotated[
        str, typer.Option(help="Weights dtype of the export: auto (the base model's), bf16, fp16, fp32.")
    ] = "auto",
    force: Annotated[
        bool, typer.Option(help="Replace the output folder if it exists and is not empty.")
    ] = False,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    offload_folder: OffloadFolder = None,
) -> None:
    """Export a checkpoint as a complete Hugging Face folder (safetensors weights, config, tokenizer,
    image-processor config with the trained resolution limits, chat template, vlmkit.json with the
    resolution settings)."""
    from vlmkit.export import export

    path = export(
        ckpt, output, merge_lora=merge_lora, dtype=dtype, force=force, device_map=device_map,
        max_memory=max_memory, offload_folder=offload_folder,
    )
    typer.echo(f"exported {ckpt} to {path}")


@app.command("serve")
@with_encoding_options()
def serve_command(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model folder or hub id (e.g. Qwen/Qwen2-VL-2B-Instruct).")
    ] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option(help="A vlmkit checkpoint (RUN/checkpoint-N), served with its run's template and settings."),
    ] = None,
    adapters: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=PATH of a LoRA checkpoint, served as model NAME (repeatable). Each vlmkit checkpoint keeps "
            "its own run's pixel limits and system prompt."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' on every endpoint but /health (401 otherwise)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Name of the main model in /v1/models. Default: the hub id or folder name.")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="transformers (dynamic batching here), or vllm (runs `vllm serve`; GPU, vllm installed).")
    ] = "transformers",
    tensor_parallel_size: TensorParallelSize = 1,
    data_parallel_size: Annotated[
        int, typer.Option(help="With --backend vllm: copies of the model serving requests (vLLM data parallelism).")
    ] = 1,
    vllm_arg: VllmArg = None,
    allow_media_dir: Annotated[
        list[Path] | None,
        typer.Option(help="Let clients name local files, only inside this folder (repeatable). Default: none."),
    ] = None,
    allow_private_urls: Annotated[
        bool, typer.Option(help="Fetch media URLs on private, loopback and link-local addresses too.")
    ] = False,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body; larger ones get 413.")] = 16 * 2**20,
    max_media_bytes: Annotated[int, typer.Option(help="Largest image or video fetched from a URL.")] = 32 * 2**20,
    media_timeout: Annotated[float, typer.Option(help="Seconds allowed to fetch one media URL.")] = 10.0,
    max_image_pixels: Annotated[
        int, typer.Option(help="Largest image or video frame (width x height) decoded; larger ones get 413.")
    ] = 64 * 2**20,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of a request that gives none.")] = 512,
    max_total_tokens: Annotated[
        int, typer.Option(help="Most tokens one request may ask to generate, n x max_tokens (400 beyond).")
    ] = 8192,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(
            help="Most prompt tokens (text and media) of one request (400 beyond). Default: the model's context length."
        ),
    ] = None,
    max_video_frames: Annotated[
        int, typer.Option(help="Most frames sampled from one video of a request (413 beyond).")
    ] = 128,
    max_batch_size: Annotated[int, typer.Option(help="Most sequences generated together.")] = 16,
    encoding: EncodingSettings = EncodingSettings(),
    trust_remote_code: TrustRemoteCode = False,
    dtype: DType = "auto",
    device: Device = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    offload_folder: OffloadFolder = None,
    attn_impl: AttnImpl = "sdpa",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve a model (and named LoRA adapters) behind the OpenAI chat API: POST /v1/chat/completions
    (text, image_url, video_url; stream, n, max_tokens, temperature, top_p, stop, seed), GET /v1/models,
    GET /health. Requests are batched dynamically; the model's saved template and pixel limits apply."""
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise VlmkitError("vlmkit serve needs fastapi and uvicorn: pip install 'vlmkit[serve]'")
    from vlmkit.serve import parse_adapters, serve

    serve(
        model,
        ckpt=ckpt,
        adapters=parse_adapters(adapters or []),
        host=host,
        port=port,
        api_key=api_key,
        served_model_name=served_model_name,
        allow_media_dir=allow_media_dir,
        allow_private_urls=allow_private_urls,
        max_request_bytes=max_request_bytes,
        max_media_bytes=max_media_bytes,
        media_timeout=media_timeout,
        max_image_pixels=max_image_pixels,
        max_tokens=max_tokens,
        max_total_tokens=max_total_tokens,
        max_prompt_tokens=max_prompt_tokens,
        max_video_frames=max_video_frames,
        max_batch_size=max_batch_size,
        encoding=encoding,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        device=device,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        attn_impl=attn_impl,
        log_level=log_level,
        backend=backend,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        vllm_args=vllm_arg,
    )


def main() -> None:
    """Entry point: user mistakes print one `error:` line and exit 2; bugs keep their traceback; Ctrl-C
    exits 130 at once (`leave_at_once`)."""
    from vlmkit.peer_env import command_encodes, ignored_variable_warnings

    if command_encodes(sys.argv[1:]):
        for line in ignored_variable_warnings():
            typer.echo(line, err=True)
    try:
        app()
    except VlmkitError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:  # Ctrl-C: typer turns KeyboardInterrupt into exit 130
            leave_at_once(130)
        raise
    except KeyboardInterrupt:
        leave_at_once(130)


def leave_at_once(code: int) -> None:
    """Exit with `code` without the interpreter's teardown, once nothing is left to finish. The teardown
    frees every object of torch and transformers one by one (garbage collection over ~400k objects): 4-7 s
    on two busy cores, over 20 s at times, past 60 s under two pytest-xdist workers, while a user who
    pressed Ctrl-C waits for the shell. Exit handlers still run (temporary folders, logging) and the
    standard streams are flushed; while another non-daemon thread runs (it may be writing a file) the
    ordinary exit, which waits for it, is taken instead."""
    import atexit
    import os
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the teardown would run first: weakref.finalize, logging, offload folders
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
