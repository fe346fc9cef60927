"""The options of a fine-tuning run, in groups: each option is one field with its default and help
(`vlmkit.groups.option`), each group checks its own values (`check`).

    DataOptions        what is trained on what: the base model, datasets, sequence length, packing
    TunerOptions       which weights train and how: LoRA or full, frozen parts, QLoRA
    OptimOptions       steps, batch, learning rates, schedule, AdamW
    CheckpointOptions  where the run goes, what is saved and kept, resuming
    EvalOptions        validation loss, scored answers, the best checkpoint
    TrackingOptions    logging and progress
    EngineOptions      dtype, attention kernel, DataLoader and encode cache, DeepSpeed / FSDP / device map

`vlmkit sft` takes one parameter per group (`vlmkit.commands.sft`); `SFTConfig` (`vlmkit.train.config`), the
flat record of a run, has one field per group field. Checks that read several groups are `SFTConfig.validate`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.errors import VlmkitError
from vlmkit.groups import option, same_option
from vlmkit.models.loader import LoadOptions

TUNERS = ("lora", "full")
TRUNCATION = ("delete", "shrink")
QUANT = (None, "4bit", "8bit")
DEEPSPEED = (None, "zero2", "zero3")
FSDP = (None, "full_shard", "shard_grad_op")
REPORT_TO = ("auto", "tensorboard", "wandb", "swanlab", "mlflow", "none")


def refuse(checks: list[tuple[bool, str]]) -> None:
    """Raise a one-line `VlmkitError` with the message of the first check that fails."""
    for ok, message in checks:
        if not ok:
            raise VlmkitError(message)


@dataclass(frozen=True)
class DataOptions:
    model: str | None = option(None, "Base model folder or hub id.", flags=("--model", "-m"))
    dataset: list[str] = option(
        help="Training data: .json/.jsonl (any supported format), .parquet, .arrow, .csv/.tsv, a folder of "
        "shards or save_to_disk, or a hub id hf::org/name[:subset][@split] (ms:: for ModelScope); "
        "SOURCE#N samples N rows. List several after one --dataset (--dataset a.jsonl b.json#2000) or repeat the flag.",
        flags=("--dataset", "-d"),
        default_factory=list,
    )
    val_dataset: list[str] = option(
        help="Validation data, listed as for --dataset; its eval loss is logged every --eval-steps.",
        default_factory=list,
    )
    split_ratio: float = option(
        0.0, "Hold out this fraction of the training rows for validation (instead of --val-dataset)."
    )
    media_root: str | None = option(None, "Extra folder for relative media paths (after each dataset file's folder).")
    columns: str | None = option(
        None,
        "Column datasets (Parquet, CSV, hub): which column is which field, e.g. "
        "image=img,query=question,response=answer, when the names are not recognised.",
    )
    prompt: str | None = option(
        None,
        "User turn for column datasets without a question column (e.g. 'COCO Yes:'); default by "
        "schema (see `vlmkit data check`). Saved with the run.",
    )
    streaming: bool = option(
        False,
        "Read the training rows as training goes (for data too big to check up front; needs --max-steps): "
        "rows in stored order, split across processes and DataLoader workers, checked and packed as they come, "
        "bad ones skipped and listed; SOURCE#N streams the first N rows; --resume continues after the last "
        "row trained. No encode cache, --val-dataset or --split-ratio.",
        flags=("--streaming",),
    )
    max_length: int = option(2048, "Longest sequence in tokens, image tokens included.")
    packing: bool | None = option(
        None,
        "Pack several rows into each sequence of up to --max-length tokens (no attention across rows, each row's "
        "own M-RoPE positions; padding-free with flash_attention_2); --batch-size then counts packed sequences. "
        "Default: on for families that support it (the Qwen-VL ones), off otherwise.",
        flags=("--packing/--no-packing",),
    )
    group_by_length: bool = option(
        False,
        "Without packing: batch rows of similar token length together (random order of groups) to waste less "
        "padding. Off by default: when length follows the answer (short vs long replies), batches of one length "
        "are batches of one kind of answer, which can slow learning (measured on `vlmkit demo`).",
        flags=("--group-by-length/--no-group-by-length",),
    )
    truncation: str = option(
        "delete",
        "Over-long rows: delete (drop and report) or shrink (lower that row's image resolution until it fits, "
        "else drop). Never cut through image tokens.",
    )
    max_bad_fraction: float = option(
        0.01,
        "Stop before training when more than this fraction of rows is bad (bad rows are skipped and listed in "
        "bad_samples.jsonl).",
    )

    def check(self) -> None:
        refuse([
            (bool(self.model), "--model is required"),
            (bool(self.dataset), "--dataset is required (one or more PATH or PATH#N)"),
            (self.truncation in TRUNCATION, f"--truncation {self.truncation}: choose delete or shrink"),
            (0 <= self.split_ratio < 1, f"--split-ratio {self.split_ratio}: must be in [0, 1)"),
            (not (self.split_ratio and self.val_dataset), "give --val-dataset or --split-ratio, not both"),
            (0 <= self.max_bad_fraction <= 1, f"--max-bad-fraction {self.max_bad_fraction}: must be in [0, 1]"),
            (self.max_length > 0, f"--max-length {self.max_length}: must be positive"),
        ])  # fmt: skip


@dataclass(frozen=True)
class TunerOptions:
    tuner: str = option("lora", "lora (adapters on the trained parts' Linear layers) or full.")
    freeze_vit: bool = option(True, "Keep the vision tower frozen.", flags=("--freeze-vit/--no-freeze-vit",))
    freeze_aligner: bool = option(
        True, "Keep the vision-to-text projector (merger) frozen.", flags=("--freeze-aligner/--no-freeze-aligner",)
    )
    freeze_llm: bool = option(False, "Keep the language model frozen.", flags=("--freeze-llm/--no-freeze-llm",))
    target_modules: str = option(
        "all-linear",
        "LoRA targets: all-linear (also spelled ALL or all, as in ms-swift): every Linear layer of the parts that "
        "train (the language model by default; the vision tower and projector too with --no-freeze-vit / "
        "--no-freeze-aligner), never the output head; or comma-separated layer names, e.g. q_proj,v_proj.",
    )
    lora_rank: int = option(8, "LoRA rank r.")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.")
    quant: str | None = option(None, "QLoRA: load the base model in 4bit or 8bit (bitsandbytes, CUDA only).")

    def check(self) -> None:
        refuse([
            (self.tuner in TUNERS, f"--tuner {self.tuner}: choose one of {', '.join(TUNERS)}"),
            (self.quant in QUANT, f"--quant {self.quant}: choose 4bit or 8bit"),
            (self.quant is None or self.tuner == "lora", "--quant needs --tuner lora (QLoRA)"),
            (self.lora_rank > 0, f"--lora-rank {self.lora_rank}: must be positive"),
            (
                not (self.freeze_vit and self.freeze_aligner and self.freeze_llm),
                "--freeze-vit, --freeze-aligner and --freeze-llm together leave nothing to train",
            ),
        ])  # fmt: skip


@dataclass(frozen=True)
class OptimOptions:
    epochs: float = option(1.0, "Passes over the training rows.")
    max_steps: int = option(-1, "Stop after this many optimizer steps (overrides --epochs when > 0).")
    batch_size: int = option(1, "Rows per device per forward pass.")
    grad_accum: int = option(
        1, "Forward passes per optimizer step (global batch = batch-size x grad-accum x processes)."
    )
    lr: float = option(1e-4, "Peak learning rate.")
    vit_lr: float | None = option(None, "Learning rate of the vision tower (default: --lr).")
    aligner_lr: float | None = option(None, "Learning rate of the projector (default: --lr).")
    warmup_ratio: float = option(0.05, "Fraction of steps with linear warm-up.")
    scheduler: str = option("cosine", "Learning-rate schedule: cosine, linear, constant, constant_with_warmup, ...")
    weight_decay: float = option(0.1, "AdamW weight decay (not on biases and norms).")
    adam_beta2: float = option(
        0.999, "AdamW beta2; lower (0.95) adapts faster, which helps small or freshly initialised models."
    )
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    gradient_checkpointing: bool = option(
        False,
        "Recompute activations in the backward pass to save memory.",
        flags=("--gradient-checkpointing/--no-gradient-checkpointing",),
    )
    seed: int = option(42, "Seed for weights init of adapters, data order and sampling.")

    def check(self) -> None:
        refuse([
            (self.batch_size > 0 and self.grad_accum > 0, "--batch-size and --grad-accum must be positive"),
            (self.lr > 0, f"--lr {self.lr}: must be positive"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio {self.warmup_ratio}: must be in [0, 1)"),
            (0 < self.adam_beta2 < 1, f"--adam-beta2 {self.adam_beta2}: must be in (0, 1)"),
            (self.epochs > 0 or self.max_steps > 0, "--epochs must be positive (or set --max-steps)"),
        ])  # fmt: skip


@dataclass(frozen=True)
class CheckpointOptions:
    output_dir: str = option("output", "Runs go to OUTPUT_DIR/<model-name>/v<N>-<timestamp>/.")
    save_steps: int = option(50, "Save a checkpoint every N steps (and at the end).")
    save_total_limit: int | None = option(2, "Keep at most N checkpoints (oldest removed).")
    resume: str | None = option(
        None,
        "Continue from a checkpoint folder, a run folder (its newest complete checkpoint), or 'latest' (newest "
        "complete checkpoint of the newest run of this model), printing which: same data order, RNG, optimizer and scheduler state. Refused when the options that shape "
        "training (data, model, steps, learning rate, ...) differ from the run's args.json, or the data's rows "
        "changed since the run started, unless --allow-changed-args. A checkpoint file cut short or corrupt is "
        "named; 'latest' then goes on from the newest checkpoint that loads.",
    )
    allow_changed_args: bool = option(
        False,
        "With --resume: continue although training options or the data's rows differ from the run's (the "
        "differences are printed, the old args.json and data_fingerprint.json are kept as *.before-step-N.json).",
        flags=("--allow-changed-args",),
    )


@dataclass(frozen=True)
class EvalOptions:
    eval_steps: int = option(50, "Evaluate every N steps (with a validation set).")
    eval_generate: int = option(
        3, "At the end, generate answers for this many validation rows and log them next to the references."
    )
    eval_max_new_tokens: int = option(256, "Longest answer --eval-generate writes, in tokens.")
    eval_metric: str | None = option(
        None,
        "At each evaluation, also generate answers for the first --eval-metric-rows validation rows and "
        "score them with these `vlmkit eval` metrics (e.g. exact_match, anls, cer, iou@0.5); logged as eval_NAME.",
    )
    eval_metric_rows: int = option(64, "Validation rows answered and scored for --eval-metric.")
    save_best: bool = option(
        False,
        "Keep the checkpoint with the best score of the first --eval-metric (besides the last); "
        "its name is written to best_checkpoint.json in the run folder.",
    )

    def check(self) -> None:
        refuse([(self.eval_max_new_tokens > 0, f"--eval-max-new-tokens {self.eval_max_new_tokens}: must be positive")])
        if self.eval_metric:
            from vlmkit.eval.metrics import metric_names

            metric_names(self.eval_metric, "--eval-metric")  # an unknown name fails here, before the model loads
            refuse([(self.eval_metric_rows >= 1, f"--eval-metric-rows {self.eval_metric_rows}: must be at least 1")])
        refuse([(not self.save_best or self.eval_metric,
                 "--save-best keeps the best checkpoint by --eval-metric; give --eval-metric NAME")])  # fmt: skip


@dataclass(frozen=True)
class TrackingOptions:
    logging_steps: int = option(5, "Log loss, lr and throughput every N steps.")
    report_to: str = option("auto", "auto (tensorboard when installed), tensorboard, wandb, swanlab, mlflow or none.")
    progress: bool = option(True, "Show progress bars.", flags=("--progress/--no-progress",))

    def check(self) -> None:
        refuse([(self.report_to in REPORT_TO, f"--report-to {self.report_to}: choose one of {', '.join(REPORT_TO)}")])


@dataclass(frozen=True)
class EngineOptions:
    dtype: str = option("auto", "auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.")
    attn_impl: str = option("sdpa", "sdpa, eager, or flash_attention_2.")
    trust_remote_code: bool = same_option(LoadOptions, "trust_remote_code")
    num_workers: int | None = option(
        None, "DataLoader worker processes encoding rows while the model trains (default: 4 on GPU, 0 on CPU)."
    )
    encode_cache: bool = option(
        True,
        "Keep encoded rows (tokens and resized images) on disk, keyed by the data, media files and encoding "
        "settings, so a second or resumed run does not re-encode. --no-cache encodes every row every epoch.",
        flags=("--cache/--no-cache",),
    )
    cache_dir: str | None = option(
        None,
        "Folder of the encode cache (default: OUTPUT_DIR/encode_cache, shared by the runs in OUTPUT_DIR). "
        "Delete it to free the space.",
    )
    encode_workers: int = option(
        0,
        "Before training, fill the encode cache with this many processes (0: rows are encoded and cached by the "
        "DataLoader workers as training reads them).",
    )
    deepspeed: str | None = option(None, "DeepSpeed preset: zero2 or zero3 (launch with torchrun or accelerate launch).")
    fsdp: str | None = option(None, "FSDP: full_shard or shard_grad_op (launch with torchrun or accelerate launch).")
    device_map: str | None = option(
        None,
        "LoRA on a model larger than one GPU (naive model parallel, one process): auto, balanced, "
        "balanced_low_0, sequential or a JSON {module: GPU index}, as for `vlmkit infer`; every layer must "
        "fit on a GPU (no CPU or disk offload). Not with torchrun, --deepspeed or --fsdp.",
    )
    max_memory: str | None = option(
        None, "With --device-map: most memory per GPU, e.g. 0=30GiB,1=40GiB (leave room for activations)."
    )

    def check(self) -> None:
        from vlmkit.models.placement import refuse_launcher

        refuse([
            (self.deepspeed in DEEPSPEED, f"--deepspeed {self.deepspeed}: choose zero2 or zero3"),
            (self.fsdp in FSDP, f"--fsdp {self.fsdp}: choose full_shard or shard_grad_op"),
            (not (self.deepspeed and self.fsdp), "--deepspeed and --fsdp cannot be combined; pick one"),
            (
                not (self.device_map and (self.deepspeed or self.fsdp)),
                f"--device-map and --{'deepspeed' if self.deepspeed else 'fsdp'}: both place the model; "
                "--device-map splits one copy over the GPUs of one process (naive model parallel), DeepSpeed "
                "and FSDP shard it over processes: pick one",
            ),
            (self.max_memory is None or self.device_map, "--max-memory limits --device-map; give --device-map too"),
            (self.encode_workers >= 0, f"--encode-workers {self.encode_workers}: must be 0 or more"),
        ])  # fmt: skip
        if self.device_map:
            refuse_launcher()


# every group of a run, in the order of `vlmkit sft --help` (the encoding options follow the data's)
SFT_GROUPS = (DataOptions, TunerOptions, OptimOptions, CheckpointOptions, EvalOptions, TrackingOptions, EngineOptions)
