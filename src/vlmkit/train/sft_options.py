"""The options of `vlmkit sft`, one type per flag (its help text and `--help` panel), in the order `--help`
lists them; `vlmkit.train.command.sft_command` declares one parameter of each type. Each flag maps to the
`SFTConfig` field of the same name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DATA = "Data"
TUNING = "Tuning"
OPTIMISATION = "Optimisation"
SAVING = "Saving and logging"
ENGINE = "Engine"

Model = Annotated[
    str | None, typer.Option("--model", "-m", help="Base model folder or hub id.", rich_help_panel=DATA)
]
Dataset = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset",
        "-d",
        help="Training data: .json/.jsonl (any supported format), .parquet, .arrow, .csv/.tsv, a folder of "
        "shards or save_to_disk, or a hub id hf::org/name[:subset][@split] (ms:: for ModelScope); "
        "SOURCE#N samples N rows. List several after one --dataset (--dataset a.jsonl b.json#2000) or repeat the flag.",
        rich_help_panel=DATA,
    ),
]
ValDataset = Annotated[
    list[str] | None,
    typer.Option(
        help="Validation data, listed as for --dataset; eval loss every --eval-steps and sample answers at the end.",
        rich_help_panel=DATA,
    ),
]
SplitRatio = Annotated[
    float,
    typer.Option(
        help="Hold out this fraction of the training rows for validation (instead of --val-dataset).",
        rich_help_panel=DATA,
    ),
]
MediaRoot = Annotated[
    str | None,
    typer.Option(
        help="Extra folder for relative media paths (after each dataset file's folder).",
        rich_help_panel=DATA,
    ),
]
Columns = Annotated[
    str | None,
    typer.Option(
        help="Column datasets (Parquet, CSV, hub): which column is which field, e.g. "
        "image=img,query=question,response=answer, when the names are not recognised.",
        rich_help_panel=DATA,
    ),
]
Prompt = Annotated[
    str | None,
    typer.Option(
        help="User turn for column datasets without a question column (e.g. 'COCO Yes:'); default by "
        "schema (see `vlmkit data check`). Saved with the run.",
        rich_help_panel=DATA,
    ),
]
Streaming = Annotated[
    bool,
    typer.Option(
        "--streaming",
        help="Read the training rows as training goes (for data too big to check up front; needs --max-steps): "
        "rows in stored order, split across processes and DataLoader workers, checked and packed as they come, "
        "bad ones skipped and listed; SOURCE#N streams the first N rows; --resume continues after the last "
        "row trained. No encode cache, --val-dataset or --split-ratio.",
        rich_help_panel=DATA,
    ),
]
MaxLength = Annotated[
    int, typer.Option(help="Longest sequence in tokens, image tokens included.", rich_help_panel=DATA)
]
Packing = Annotated[
    bool | None,
    typer.Option(
        "--packing/--no-packing",
        help="Pack several rows into each sequence of up to --max-length tokens (no attention across rows, each row's own M-RoPE positions; padding-free with flash_attention_2); --batch-size then counts packed sequences. Default: on for families that support it (the Qwen-VL ones), off otherwise.",
        rich_help_panel=DATA,
    ),
]
GroupByLength = Annotated[
    bool,
    typer.Option(
        "--group-by-length/--no-group-by-length",
        help="Without packing: batch rows of similar token length together (random order of groups) to waste less "
        "padding. Off by default: when length follows the answer (short vs long replies), batches of one length "
        "are batches of one kind of answer, which can slow learning (measured on `vlmkit demo`).",
        rich_help_panel=DATA,
    ),
]
Truncation = Annotated[
    str,
    typer.Option(
        help="Over-long rows: delete (drop and report) or shrink (lower that row's image resolution until it fits, else drop). Never cut through image tokens.",
        rich_help_panel=DATA,
    ),
]
MaxBadFraction = Annotated[
    float,
    typer.Option(
        help="Stop before training when more than this fraction of rows is bad (bad rows are skipped and listed in bad_samples.jsonl).",
        rich_help_panel=DATA,
    ),
]
Tuner = Annotated[
    str,
    typer.Option(help="lora (adapters on the trained parts' Linear layers) or full.", rich_help_panel=TUNING),
]
FreezeVit = Annotated[
    bool,
    typer.Option(
        "--freeze-vit/--no-freeze-vit", help="Keep the vision tower frozen.", rich_help_panel=TUNING
    ),
]
FreezeAligner = Annotated[
    bool,
    typer.Option(
        "--freeze-aligner/--no-freeze-aligner",
        help="Keep the vision-to-text projector (merger) frozen.",
        rich_help_panel=TUNING,
    ),
]
FreezeLlm = Annotated[
    bool,
    typer.Option(
        "--freeze-llm/--no-freeze-llm", help="Keep the language model frozen.", rich_help_panel=TUNING
    ),
]
TargetModules = Annotated[
    str,
    typer.Option(
        help="LoRA targets: all-linear (also spelled ALL or all, as in ms-swift): every Linear layer of the parts that train (the language model by default; the vision tower and projector too with --no-freeze-vit / --no-freeze-aligner), never the output head; or comma-separated layer names, e.g. q_proj,v_proj.",
        rich_help_panel=TUNING,
    ),
]
LoraRank = Annotated[int, typer.Option(help="LoRA rank r.", rich_help_panel=TUNING)]
LoraAlpha = Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).", rich_help_panel=TUNING)]
LoraDropout = Annotated[
    float, typer.Option(help="Dropout on the LoRA input.", rich_help_panel=TUNING)
]
Quant = Annotated[
    str | None,
    typer.Option(
        help="QLoRA: load the base model in 4bit or 8bit (bitsandbytes, CUDA only).", rich_help_panel=TUNING
    ),
]
Epochs = Annotated[float, typer.Option(help="Passes over the training rows.", rich_help_panel=OPTIMISATION)]
MaxSteps = Annotated[
    int,
    typer.Option(
        help="Stop after this many optimizer steps (overrides --epochs when > 0).", rich_help_panel=OPTIMISATION
    ),
]
BatchSize = Annotated[
    int, typer.Option(help="Rows per device per forward pass.", rich_help_panel=OPTIMISATION)
]
GradAccum = Annotated[
    int,
    typer.Option(
        help="Forward passes per optimizer step (global batch = batch-size x grad-accum x processes).",
        rich_help_panel=OPTIMISATION,
    ),
]
Lr = Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=OPTIMISATION)]
VitLr = Annotated[
    float | None,
    typer.Option(help="Learning rate of the vision tower (default: --lr).", rich_help_panel=OPTIMISATION),
]
AlignerLr = Annotated[
    float | None, typer.Option(help="Learning rate of the projector (default: --lr).", rich_help_panel=OPTIMISATION)
]
WarmupRatio = Annotated[
    float, typer.Option(help="Fraction of steps with linear warm-up.", rich_help_panel=OPTIMISATION)
]
Scheduler = Annotated[
    str,
    typer.Option(
        help="Learning-rate schedule: cosine, linear, constant, constant_with_warmup, ...",
        rich_help_panel=OPTIMISATION,
    ),
]
WeightDecay = Annotated[
    float, typer.Option(help="AdamW weight decay (not on biases and norms).", rich_help_panel=OPTIMISATION)
]
AdamBeta2 = Annotated[
    float,
    typer.Option(
        help="AdamW beta2; lower (0.95) adapts faster, which helps small or freshly initialised models.",
        rich_help_panel=OPTIMISATION,
    ),
]
MaxGradNorm = Annotated[float, typer.Option(help="Gradient clipping norm.", rich_help_panel=OPTIMISATION)]
GradientCheckpointing = Annotated[
    bool,
    typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in the backward pass to save memory.",
        rich_help_panel=OPTIMISATION,
    ),
]
Seed = Annotated[
    int,
    typer.Option(help="Seed for weights init of adapters, data order and sampling.", rich_help_panel=OPTIMISATION),
]
OutputDir = Annotated[
    str, typer.Option(help="Runs go to OUTPUT_DIR/<model-name>/v<N>-<timestamp>/.", rich_help_panel=SAVING)
]
EvalSteps = Annotated[
    int, typer.Option(help="Evaluate every N steps (with a validation set).", rich_help_panel=SAVING)
]
SaveSteps = Annotated[
    int, typer.Option(help="Save a checkpoint every N steps (and at the end).", rich_help_panel=SAVING)
]
SaveTotalLimit = Annotated[
    int | None, typer.Option(help="Keep at most N checkpoints (oldest removed).", rich_help_panel=SAVING)
]
LoggingSteps = Annotated[
    int, typer.Option(help="Log loss, lr and throughput every N steps.", rich_help_panel=SAVING)
]
ReportTo = Annotated[
    str,
    typer.Option(
        help="auto (tensorboard when installed), tensorboard, wandb, swanlab, mlflow or none.",
        rich_help_panel=SAVING,
    ),
]
EvalGenerate = Annotated[
    int,
    typer.Option(
        help="At the end, generate answers for this many validation rows and log them next to the references.",
        rich_help_panel=SAVING,
    ),
]
EvalMaxNewTokens = Annotated[
    int,
    typer.Option(help="Longest answer --eval-generate writes, in tokens.", rich_help_panel=SAVING),
]
EvalMetric = Annotated[
    str | None,
    typer.Option(
        help="At each evaluation, also generate answers for the first --eval-metric-rows validation rows and "
        "score them with these `vlmkit eval` metrics (e.g. exact_match, anls, cer, iou@0.5); logged as eval_NAME.",
        rich_help_panel=SAVING,
    ),
]
EvalMetricRows = Annotated[
    int, typer.Option(help="Validation rows answered and scored for --eval-metric.", rich_help_panel=SAVING)
]
SaveBest = Annotated[
    bool,
    typer.Option(
        help="Keep the checkpoint with the best score of the first --eval-metric (besides the last); "
        "its name is written to best_checkpoint.json in the run folder.",
        rich_help_panel=SAVING,
    ),
]
Resume = Annotated[
    str | None,
    typer.Option(
        help="Continue from a checkpoint folder, or 'latest' (newest complete checkpoint of the newest run of this model): same data order, RNG, optimizer and scheduler state. Refused when the options that shape training (data, model, steps, learning rate, ...) differ from the run's args.json, or the data's rows changed since the run started, unless --allow-changed-args. A checkpoint file cut short or corrupt is named; 'latest' then goes on from the newest checkpoint that loads.",
        rich_help_panel=SAVING,
    ),
]
AllowChangedArgs = Annotated[
    bool,
    typer.Option(
        "--allow-changed-args",
        help="With --resume: continue although training options or the data's rows differ from the run's (the differences are printed, the old args.json and data_fingerprint.json are kept as *.before-step-N.json).",
        rich_help_panel=SAVING,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        help="auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.", rich_help_panel=ENGINE
    ),
]
AttnImpl = Annotated[
    str, typer.Option(help="sdpa, eager, or flash_attention_2.", rich_help_panel=ENGINE)
]
NumWorkers = Annotated[
    int | None,
    typer.Option(
        help="DataLoader worker processes encoding rows while the model trains (default: 4 on GPU, 0 on CPU).",
        rich_help_panel=ENGINE,
    ),
]
EncodeCache = Annotated[
    bool,
    typer.Option(
        "--cache/--no-cache",
        help="Keep encoded rows (tokens and resized images) on disk, keyed by the data, media files and encoding settings, so a second or resumed run does not re-encode. --no-cache encodes every row every epoch.",
        rich_help_panel=ENGINE,
    ),
]
CacheDir = Annotated[
    str | None,
    typer.Option(
        help="Folder of the encode cache (default: OUTPUT_DIR/encode_cache, shared by the runs in OUTPUT_DIR). Delete it to free the space.",
        rich_help_panel=ENGINE,
    ),
]
EncodeWorkers = Annotated[
    int,
    typer.Option(
        help="Before training, fill the encode cache with this many processes (0: rows are encoded and cached by the DataLoader workers as training reads them).",
        rich_help_panel=ENGINE,
    ),
]
Deepspeed = Annotated[
    str | None,
    typer.Option(
        help="DeepSpeed preset: zero2 or zero3 (launch with torchrun or accelerate launch).",
        rich_help_panel=ENGINE,
    ),
]
Fsdp = Annotated[
    str | None,
    typer.Option(
        help="FSDP: full_shard or shard_grad_op (launch with torchrun or accelerate launch).",
        rich_help_panel=ENGINE,
    ),
]
DeviceMap = Annotated[
    str | None,
    typer.Option(
        help="LoRA on a model larger than one GPU (naive model parallel, one process): auto, balanced, "
        "balanced_low_0, sequential or a JSON {module: GPU index}, as for `vlmkit infer`; every layer must "
        "fit on a GPU (no CPU or disk offload). Not with torchrun, --deepspeed or --fsdp.",
        rich_help_panel=ENGINE,
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        help="With --device-map: most memory per GPU, e.g. 0=30GiB,1=40GiB (leave room for activations).",
        rich_help_panel=ENGINE,
    ),
]
Progress = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars.", rich_help_panel=SAVING)
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of options (keys as the flags); flags given here override it.",
        rich_help_panel=DATA,
    ),
]
