"""`vlmkit sft`: the command (its options are declared in `vlmkit.train.sft_options`, one type per flag).
Each flag maps to an `SFTConfig` field of the same name; flags given on the command line override
`--config run.yaml`."""

from __future__ import annotations

import typer
from typer.core import TyperCommand

from vlmkit.commands.options import field_option, with_encoding_options
from vlmkit.loader import LoadOptions
from vlmkit.settings import EncodingSettings
from vlmkit.train import sft_options as opt

TrustRemoteCode = field_option(LoadOptions, "trust_remote_code")
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


@with_encoding_options(panel=opt.DATA)
def sft_command(
    ctx: typer.Context,
    model: opt.Model = None,
    dataset: opt.Dataset = None,
    val_dataset: opt.ValDataset = None,
    split_ratio: opt.SplitRatio = 0.0,
    media_root: opt.MediaRoot = None,
    columns: opt.Columns = None,
    prompt: opt.Prompt = None,
    streaming: opt.Streaming = False,
    max_length: opt.MaxLength = 2048,
    packing: opt.Packing = None,
    group_by_length: opt.GroupByLength = False,
    truncation: opt.Truncation = "delete",
    max_bad_fraction: opt.MaxBadFraction = 0.01,
    encoding: EncodingSettings = EncodingSettings(),  # the encoding options, saved with the run (vlmkit.json)
    tuner: opt.Tuner = "lora",
    freeze_vit: opt.FreezeVit = True,
    freeze_aligner: opt.FreezeAligner = True,
    freeze_llm: opt.FreezeLlm = False,
    target_modules: opt.TargetModules = "all-linear",
    lora_rank: opt.LoraRank = 8,
    lora_alpha: opt.LoraAlpha = 32,
    lora_dropout: opt.LoraDropout = 0.05,
    quant: opt.Quant = None,
    epochs: opt.Epochs = 1.0,
    max_steps: opt.MaxSteps = -1,
    batch_size: opt.BatchSize = 1,
    grad_accum: opt.GradAccum = 1,
    lr: opt.Lr = 1e-4,
    vit_lr: opt.VitLr = None,
    aligner_lr: opt.AlignerLr = None,
    warmup_ratio: opt.WarmupRatio = 0.05,
    scheduler: opt.Scheduler = "cosine",
    weight_decay: opt.WeightDecay = 0.1,
    adam_beta2: opt.AdamBeta2 = 0.999,
    max_grad_norm: opt.MaxGradNorm = 1.0,
    gradient_checkpointing: opt.GradientCheckpointing = False,
    seed: opt.Seed = 42,
    output_dir: opt.OutputDir = "output",
    eval_steps: opt.EvalSteps = 50,
    save_steps: opt.SaveSteps = 50,
    save_total_limit: opt.SaveTotalLimit = 2,
    logging_steps: opt.LoggingSteps = 5,
    report_to: opt.ReportTo = "auto",
    eval_generate: opt.EvalGenerate = 3,
    eval_max_new_tokens: opt.EvalMaxNewTokens = 256,
    eval_metric: opt.EvalMetric = None,
    eval_metric_rows: opt.EvalMetricRows = 64,
    save_best: opt.SaveBest = False,
    resume: opt.Resume = None,
    allow_changed_args: opt.AllowChangedArgs = False,
    dtype: opt.Dtype = "auto",
    attn_impl: opt.AttnImpl = "sdpa",
    trust_remote_code: TrustRemoteCode = False,
    num_workers: opt.NumWorkers = None,
    encode_cache: opt.EncodeCache = True,
    cache_dir: opt.CacheDir = None,
    encode_workers: opt.EncodeWorkers = 0,
    deepspeed: opt.Deepspeed = None,
    fsdp: opt.Fsdp = None,
    device_map: opt.DeviceMap = None,
    max_memory: opt.MaxMemory = None,
    progress: opt.Progress = True,
    config: opt.Config = None,
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
