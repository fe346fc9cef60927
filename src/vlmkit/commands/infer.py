"""`vlmkit infer`: chat with a model, or answer a dataset file (batch inference), with either backend."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from vlmkit.backends.transformers_backend import GenerationOptions
from vlmkit.backends.vllm_args import BackendOptions
from vlmkit.commands.options import with_options
from vlmkit.data.options import DatasetOptions
from vlmkit.errors import VlmkitError
from vlmkit.models.loader import LoadOptions
from vlmkit.settings import EncodingSettings


@with_options(omit={"backend": ("data_parallel_size",)})
def infer(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model folder or hub id (e.g. Qwen/Qwen2-VL-2B-Instruct).")
    ] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option(help="A vlmkit checkpoint (RUN/checkpoint-N): loads its base model and adapter with the run's "
                     "own template and resolution settings."),
    ] = None,  # fmt: skip
    merge_lora: Annotated[
        bool, typer.Option(help="Merge the LoRA adapter into the weights on load (faster generation).")
    ] = False,
    val: Annotated[
        bool, typer.Option(help="With --ckpt: batch inference over the run's validation set (from its args.json).")
    ] = False,
    input: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="Dataset for batch inference, as sft's --dataset (a .json/.jsonl/.parquet/"
                     ".arrow/.csv file, a folder, or hf::org/name). Without it: interactive chat."),
    ] = None,  # fmt: skip
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where batch inference writes one JSON line per input row. Default: "
                     "INPUT with .preds.jsonl (with --val: CKPT.val.preds.jsonl beside the checkpoint, one file "
                     "per checkpoint)."),
    ] = None,  # fmt: skip
    batch_size: Annotated[int, typer.Option(help="Rows generated together in batch inference.")] = 8,
    reading: DatasetOptions = DatasetOptions(),
    generation: GenerationOptions = GenerationOptions(),
    encoding: EncodingSettings = EncodingSettings(),
    loading: LoadOptions = LoadOptions(),
    draw: Annotated[
        Path | None,
        typer.Option(help="Folder to save every input image to with the boxes of the model's reply drawn and "
                     "labelled (batch: rowNNNNN_imageK.png; chat: chatNNN_imageK.png)."),
    ] = None,  # fmt: skip
    backend: BackendOptions = BackendOptions(),
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Chat: do not print the model and resolution settings at start nor each "
                     "image's sizes and token count."),
    ] = False,  # fmt: skip
) -> None:
    """Chat with a model interactively, or run batch inference over a dataset file with --input.

    In the chat, each <image> or <video> in your message asks for a path or URL; 'clear' resets the
    history; 'exit', 'quit' or end of input leave. Piped input works, so chats can be scripted."""
    from vlmkit.infer.batch import run_batch, run_chat

    if val:
        input, reading = _val_input(ckpt, input), _run_reading(ckpt, reading)
        output = output or _val_output(ckpt)
    vlm = _load(model, ckpt, merge_lora, input, loading, encoding, backend)
    if input is None:
        run_chat(vlm, generation, draw_dir=draw, quiet=quiet, system_option=encoding.system)
        return
    output = output or _default_output(input)
    counts = run_batch(
        vlm, input, output, generation, batch_size=batch_size, media_root=reading.media_root,
        columns=reading.column_map(), prompt=reading.prompt, progress=sys.stderr.isatty(), draw_dir=draw,
    )  # fmt: skip
    from vlmkit.infer.output import first_error, is_main_process

    if is_main_process():  # one line for a torchrun run, not one per rank
        typer.echo(f"wrote {counts['ok'] + counts['failed']} rows to {output} ({counts['failed']} failed)")
    if counts["failed"] and not counts["ok"]:  # a script must not read a file of errors as a finished run
        raise VlmkitError(f"every row failed, none was answered; first error: {first_error(output)}")


def _load(model, ckpt, merge_lora, input, loading: LoadOptions, encoding, backend: BackendOptions) -> Any:
    """The model, loaded by the chosen backend (vLLM: batch inference only, with the options it applies)."""
    if input is not None:
        from vlmkit.infer.output import join_ranks

        join_ranks(loading.device, backend.backend)  # under torchrun: before the model loads, so each rank takes its own GPU
    if backend.vllm:
        from vlmkit.backends.vllm_offline import load_vllm, refuse_for_vllm

        if input is None:
            raise VlmkitError("--backend vllm runs batch inference (--input FILE); to chat, use vlmkit serve --backend vllm")
        refuse_for_vllm(model, ckpt, loading, encoding, merge_lora=merge_lora)
        return load_vllm(model, ckpt=ckpt, dtype=loading.dtype, tensor_parallel_size=backend.tensor_parallel_size,
                         vllm_args=backend.vllm_args, encoding=encoding)  # fmt: skip
    from vlmkit.backends.transformers_backend import load

    vlm = load(model, ckpt=ckpt, merge_lora=merge_lora, loading=loading, encoding=encoding)
    if loading.device_map is not None:
        from vlmkit.models.placement import describe

        typer.echo(describe(vlm.model), err=True)
    return vlm


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


def _run_reading(ckpt: Path, reading: DatasetOptions) -> DatasetOptions:
    """--columns and --prompt of the run that wrote `ckpt`, unless given here (they read its val data)."""
    args = json.loads((Path(ckpt).parent / "args.json").read_text())
    return replace(
        reading,
        columns=reading.columns if reading.columns is not None else args.get("columns"),
        prompt=reading.prompt if reading.prompt is not None else args.get("prompt"),
    )


def _val_input(ckpt: Path | None, given: Path | None) -> Path:
    """The validation file of the run that wrote `ckpt` (seed 000's --load_dataset_config): the rows that
    --split-ratio held out (RUN/val_split.jsonl), else its --val-dataset (args.json keeps it absolute)."""
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
    from vlmkit.data.preference import is_preference_source

    if is_preference_source(args["val_dataset"][0]):  # its rows would be read as conversations, each wrongly
        raise VlmkitError(
            f"--val: the run's --val-dataset {args['val_dataset'][0]} holds preference pairs (a vlmkit dpo run), not "
            f"questions with one reference answer; its eval loss and rewards are in {run_dir / 'train_log.jsonl'}; "
            "to answer its questions, pass them with --input FILE"
        )
    return Path(args["val_dataset"][0])
