"""`vlmkit sft` options. Each flag maps to an `SFTConfig` field of the same name; flags given on the
command line override `--config run.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from vlmkit.options import TrustRemoteCode, with_encoding_options
from vlmkit.settings import EncodingSettings

# Options that take several values after one flag, as `vlmkit data check` does: --dataset a.jsonl b.json#2000.
MANY_VALUES = ("--dataset", "-d", "--val-dataset")


def repeat_many_values(args: list[str]) -> list[str]:
    """`--dataset a b --val-dataset c` -> `--dataset a --dataset b --val-dataset c`: every bare value after
    one of MANY_VALUES repeats that flag (sft has no positional arguments, so a bare value has no other
    meaning)."""
    out: list[str] = []
    flag = None
    for arg in args:
        if arg == "--":
            flag = None
            out.append(arg)
        elif arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0]
            flag = name if name in MANY_VALUES else None
            out.append(arg)
        elif flag is not None and out and out[-1] != flag:
            out += [flag, arg]
        else:
            out.append(arg)
    return out


class ManyValuesCommand(TyperCommand):
    """The sft command, with several values accepted after --dataset and --val-dataset."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, repeat_many_values(args))


_P = "Data"
_T = "Tuning"
_O = "Optimisation"
_S = "Saving and logging"
_E = "Engine"


@with_encoding_options(panel=_P)
def sft_command(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model folder or hub id.", rich_help_panel=_P)
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            "-d",
            help="Training data: .json/.jsonl (any supported format), .parquet, .arrow, .csv/.tsv, a folder of "
            "shards or save_to_disk, or a hub id hf::org/name[:subset][@split] (ms:: for ModelScope); "
            "SOURCE#N samples N rows. List several after one --dataset (--dataset a.jsonl b.json#2000) or repeat the flag.",
            rich_help_panel=_P,
        ),
    ] = None,
    val_dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="Validation data, listed as for --dataset; eval loss every --eval-steps and sample answers at the end.",
            rich_help_panel=_P,
        ),
    ] = None,
    split_ratio: Annotated[
        float,
        typer.Option(
            help="Hold out this fraction of the training rows for validation (instead of --val-dataset).",
            rich_help_panel=_P,
        ),
    ] = 0.0,
    media_root: Annotated[
        str | None,
        typer.Option(
            help="Extra folder for relative media paths (after each dataset file's folder).",
            rich_help_panel=_P,
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column datasets (Parquet, CSV, hub): which column is which field, e.g. "
            "image=img,query=question,response=answer, when the names are not recognised.",
            rich_help_panel=_P,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="User turn for column datasets without a question column (e.g. 'COCO Yes:'); default by "
            "schema (see `vlmkit data check`). Saved with the run.",
            rich_help_panel=_P,
        ),
    ] = None,
    max_length: Annotated[
        int, typer.Option(help="Longest sequence in tokens, image tokens included.", rich_help_panel=_P)
    ] = 2048,
    packing: Annotated[
        bool | None,
        typer.Option(
            "--packing/--no-packing",
            help="Pack several rows into each sequence of up to --max-length tokens (no attention across rows, each row's own M-RoPE positions; padding-free with flash_attention_2); --batch-size then counts packed sequences. Default: on for families that support it (the Qwen-VL ones), off otherwise.",
            rich_help_panel=_P,
        ),
    ] = None,
    group_by_length: Annotated[
        bool,
        typer.Option(
            "--group-by-length/--no-group-by-length",
            help="Without packing: batch rows of similar token length together (random order of groups) to waste less "
            "padding. Off by default: when length follows the answer (short vs long replies), batches of one length "
            "are batches of one kind of answer, which can slow learning (measured on `vlmkit demo`).",
            rich_help_panel=_P,
        ),
    ] = False,
    truncation: Annotated[
        str,
        typer.Option(
            help="Over-long rows: delete (drop and report) or shrink (lower that row's image resolution until it fits, else drop). Never cut through image tokens.",
            rich_help_panel=_P,
        ),
    ] = "delete",
    max_bad_fraction: Annotated[
        float,
        typer.Option(
            help="Stop before training when more than this fraction of rows is bad (bad rows are skipped and listed in bad_samples.jsonl).",
            rich_help_panel=_P,
        ),
    ] = 0.01,
    encoding: EncodingSettings = EncodingSettings(),  # the encoding options, saved with the run (vlmkit.json)
    tuner: Annotated[
        str,
        typer.Option(help="lora (adapters on the trained parts' Linear layers) or full.", rich_help_panel=_T),
    ] = "lora",
    freeze_vit: Annotated[
        bool,
        typer.Option(
            "--freeze-vit/--no-freeze-vit", help="Keep the vision tower frozen.", rich_help_panel=_T
        ),
    ] = True,
    freeze_aligner: Annotated[
        bool,
        typer.Option(
            "--freeze-aligner/--no-freeze-aligner",
            help="Keep the vision-to-text projector (merger) frozen.",
            rich_help_panel=_T,
        ),
    ] = True,
    freeze_llm: Annotated[
        bool,
        typer.Option(
            "--freeze-llm/--no-freeze-llm", help="Keep the language model frozen.", rich_help_panel=_T
        ),
    ] = False,
    target_modules: Annotated[
        str,
        typer.Option(
            help="LoRA targets: all-linear (also spelled ALL or all, as in ms-swift): every Linear layer of the parts that train (the language model by default; the vision tower and projector too with --no-freeze-vit / --no-freeze-aligner), never the output head; or comma-separated layer names, e.g. q_proj,v_proj.",
            rich_help_panel=_T,
        ),
    ] = "all-linear",
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r.", rich_help_panel=_T)] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).", rich_help_panel=_T)] = 32,
    lora_dropout: Annotated[
        float, typer.Option(help="Dropout on the LoRA input.", rich_help_panel=_T)
    ] = 0.05,
    quant: Annotated[
        str | None,
        typer.Option(
            help="QLoRA: load the base model in 4bit or 8bit (bitsandbytes, CUDA only).", rich_help_panel=_T
        ),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the training rows.", rich_help_panel=_O)] = 1.0,
    max_steps: Annotated[
        int,
        typer.Option(
            help="Stop after this many optimizer steps (overrides --epochs when > 0).", rich_help_panel=_O
        ),
    ] = -1,
    batch_size: Annotated[
        int, typer.Option(help="Rows per device per forward pass.", rich_help_panel=_O)
    ] = 1,
    grad_accum: Annotated[
        int,
        typer.Option(
            help="Forward passes per optimizer step (global batch = batch-size x grad-accum x processes).",
            rich_help_panel=_O,
        ),
    ] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=_O)] = 1e-4,
    vit_lr: Annotated[
        float | None,
        typer.Option(help="Learning rate of the vision tower (default: --lr).", rich_help_panel=_O),
    ] = None,
    aligner_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the projector (default: --lr).", rich_help_panel=_O)
    ] = None,
    warmup_ratio: Annotated[
        float, typer.Option(help="Fraction of steps with linear warm-up.", rich_help_panel=_O)
    ] = 0.05,
    scheduler: Annotated[
        str,
        typer.Option(
            help="Learning-rate schedule: cosine, linear, constant, constant_with_warmup, ...",
            rich_help_panel=_O,
        ),
    ] = "cosine",
    weight_decay: Annotated[
        float, typer.Option(help="AdamW weight decay (not on biases and norms).", rich_help_panel=_O)
    ] = 0.1,
    adam_beta2: Annotated[
        float,
        typer.Option(
            help="AdamW beta2; lower (0.95) adapts faster, which helps small or freshly initialised models.",
            rich_help_panel=_O,
        ),
    ] = 0.999,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.", rich_help_panel=_O)] = 1.0,
    gradient_checkpointing: Annotated[
        bool,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute activations in the backward pass to save memory.",
            rich_help_panel=_O,
        ),
    ] = False,
    seed: Annotated[
        int,
        typer.Option(help="Seed for weights init of adapters, data order and sampling.", rich_help_panel=_O),
    ] = 42,
    output_dir: Annotated[
        str, typer.Option(help="Runs go to OUTPUT_DIR/<model-name>/v<N>-<timestamp>/.", rich_help_panel=_S)
    ] = "output",
    eval_steps: Annotated[
        int, typer.Option(help="Evaluate every N steps (with a validation set).", rich_help_panel=_S)
    ] = 50,
    save_steps: Annotated[
        int, typer.Option(help="Save a checkpoint every N steps (and at the end).", rich_help_panel=_S)
    ] = 50,
    save_total_limit: Annotated[
        int | None, typer.Option(help="Keep at most N checkpoints (oldest removed).", rich_help_panel=_S)
    ] = 2,
    logging_steps: Annotated[
        int, typer.Option(help="Log loss, lr and throughput every N steps.", rich_help_panel=_S)
    ] = 5,
    report_to: Annotated[
        str,
        typer.Option(
            help="auto (tensorboard when installed), tensorboard, wandb, swanlab, mlflow or none.",
            rich_help_panel=_S,
        ),
    ] = "auto",
    eval_generate: Annotated[
        int,
        typer.Option(
            help="At the end, generate answers for this many validation rows and log them next to the references.",
            rich_help_panel=_S,
        ),
    ] = 3,
    eval_max_new_tokens: Annotated[
        int,
        typer.Option(help="Longest answer --eval-generate writes, in tokens.", rich_help_panel=_S),
    ] = 256,
    eval_metric: Annotated[
        str | None,
        typer.Option(
            help="At each evaluation, also generate answers for the first --eval-metric-rows validation rows and "
            "score them with these `vlmkit eval` metrics (e.g. exact_match, anls, cer, iou@0.5); logged as eval_NAME.",
            rich_help_panel=_S,
        ),
    ] = None,
    eval_metric_rows: Annotated[
        int, typer.Option(help="Validation rows answered and scored for --eval-metric.", rich_help_panel=_S)
    ] = 64,
    save_best: Annotated[
        bool,
        typer.Option(
            help="Keep the checkpoint with the best score of the first --eval-metric (besides the last); "
            "its name is written to best_checkpoint.json in the run folder.",
            rich_help_panel=_S,
        ),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue from a checkpoint folder, or 'latest' (newest complete checkpoint of the newest run of this model): same data order, RNG, optimizer and scheduler state. Refused when the options that shape training (data, model, steps, learning rate, ...) differ from the run's args.json, unless --allow-changed-args.",
            rich_help_panel=_S,
        ),
    ] = None,
    allow_changed_args: Annotated[
        bool,
        typer.Option(
            "--allow-changed-args",
            help="With --resume: continue although training options differ from the run's (the differences are printed, the old args.json is kept as args.before-step-N.json).",
            rich_help_panel=_S,
        ),
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.", rich_help_panel=_E
        ),
    ] = "auto",
    attn_impl: Annotated[
        str, typer.Option(help="sdpa, eager, or flash_attention_2.", rich_help_panel=_E)
    ] = "sdpa",
    trust_remote_code: TrustRemoteCode = False,
    num_workers: Annotated[
        int | None,
        typer.Option(
            help="DataLoader worker processes encoding rows while the model trains (default: 4 on GPU, 0 on CPU).",
            rich_help_panel=_E,
        ),
    ] = None,
    encode_cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Keep encoded rows (tokens and resized images) on disk, keyed by the data, media files and encoding settings, so a second or resumed run does not re-encode. --no-cache encodes every row every epoch.",
            rich_help_panel=_E,
        ),
    ] = True,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            help="Folder of the encode cache (default: OUTPUT_DIR/encode_cache, shared by the runs in OUTPUT_DIR). Delete it to free the space.",
            rich_help_panel=_E,
        ),
    ] = None,
    encode_workers: Annotated[
        int,
        typer.Option(
            help="Before training, fill the encode cache with this many processes (0: rows are encoded and cached by the DataLoader workers as training reads them).",
            rich_help_panel=_E,
        ),
    ] = 0,
    deepspeed: Annotated[
        str | None,
        typer.Option(
            help="DeepSpeed preset: zero2 or zero3 (launch with torchrun or accelerate launch).",
            rich_help_panel=_E,
        ),
    ] = None,
    fsdp: Annotated[
        str | None,
        typer.Option(
            help="FSDP: full_shard or shard_grad_op (launch with torchrun or accelerate launch).",
            rich_help_panel=_E,
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress bars.", rich_help_panel=_S)
    ] = True,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML file of options (keys as the flags); flags given here override it.",
            rich_help_panel=_P,
        ),
    ] = None,
) -> None:
    """Fine-tune a model on your data (LoRA, QLoRA or full; vision tower frozen by default).

    Multi-GPU: `torchrun --nproc-per-node 4 -m vlmkit sft ...` or `accelerate launch -m vlmkit sft ...`."""
    from vlmkit.train.config import make_config, read_yaml_config
    from vlmkit.train.finetune import sft

    given = {
        name: value
        for name, value in ctx.params.items()
        if name != "config" and getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    from_file = read_yaml_config(config) if config is not None else {}
    defaults = {
        name: value
        for name, value in ctx.params.items()
        if name != "config" and name not in given and name not in from_file
    }
    run_dir = sft(make_config({**defaults, **from_file}, given))
    typer.echo(f"done: {run_dir}")
