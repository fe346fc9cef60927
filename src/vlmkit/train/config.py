"""`SFTConfig`: every setting of a fine-tuning run, flat, with the CLI's defaults.

The CLI, a YAML file (`--config run.yaml`, keys spelled as the flags: `lora-rank` or
`lora_rank`) and Python callers all fill this one dataclass; flags given on the command
line override the file. The resolved config is saved as `args.json` in the run folder.
Its encoding fields (`min_pixels`, ..., `system`) are not written here: they are those of
`vlmkit.settings.EncodingSettings`, added by `with_encoding_fields`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.settings import ENCODING_FIELDS, EncodingSettings

TUNERS = ("lora", "full")
TRUNCATION = ("delete", "shrink")
QUANT = (None, "4bit", "8bit")
DEEPSPEED = (None, "zero2", "zero3")
FSDP = (None, "full_shard", "shard_grad_op")
REPORT_TO = ("auto", "tensorboard", "wandb", "swanlab", "mlflow", "none")


def with_encoding_fields(cls: type) -> type:
    """Give `cls` one field per `EncodingSettings` field (`min_pixels`, ..., default None: not given) before
    `@dataclass` reads it, so the encoding options are declared once, in `vlmkit.settings`, and an option
    added there is a run setting too (YAML key, args.json, `SFTConfig(min_pixels=...)`)."""
    encoding = dataclasses.fields(EncodingSettings)
    # assigned, not updated in place: on Python 3.14 a class's annotations may be computed afresh from its body
    cls.__annotations__ = {**cls.__annotations__, **{f.name: f.type for f in encoding}}
    for f in encoding:
        setattr(cls, f.name, None)
    return cls


@dataclass
@with_encoding_fields
class SFTConfig:
    model: str = ""
    dataset: list[str] = field(default_factory=list)
    val_dataset: list[str] = field(default_factory=list)
    split_ratio: float = 0.0
    media_root: str | None = None
    columns: str | None = None
    prompt: str | None = None
    streaming: bool = False
    output_dir: str = "output"
    tuner: str = "lora"
    freeze_vit: bool = True
    freeze_aligner: bool = True
    freeze_llm: bool = False
    target_modules: str = "all-linear"
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    quant: str | None = None
    max_length: int = 2048
    packing: bool | None = None
    group_by_length: bool = False
    truncation: str = "delete"
    max_bad_fraction: float = 0.01
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    vit_lr: float | None = None
    aligner_lr: float | None = None
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"
    weight_decay: float = 0.1
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 5
    num_workers: int | None = None
    encode_cache: bool = True
    cache_dir: str | None = None
    encode_workers: int = 0
    dtype: str = "auto"
    attn_impl: str = "sdpa"
    trust_remote_code: bool = False
    deepspeed: str | None = None
    fsdp: str | None = None
    device_map: str | None = None
    max_memory: str | None = None
    report_to: str = "auto"
    resume: str | None = None
    eval_generate: int = 3
    eval_max_new_tokens: int = 256
    allow_changed_args: bool = False
    eval_metric: str | None = None
    eval_metric_rows: int = 64
    save_best: bool = False
    progress: bool = True

    def validate(self) -> SFTConfig:
        """Raise a one-line `VlmkitError` naming the option for any value out of range."""
        checks = [
            (bool(self.model), "--model is required"),
            (bool(self.dataset), "--dataset is required (one or more PATH or PATH#N)"),
            (self.tuner in TUNERS, f"--tuner {self.tuner}: choose one of {', '.join(TUNERS)}"),
            (self.truncation in TRUNCATION, f"--truncation {self.truncation}: choose delete or shrink"),
            (self.quant in QUANT, f"--quant {self.quant}: choose 4bit or 8bit"),
            (self.quant is None or self.tuner == "lora", "--quant needs --tuner lora (QLoRA)"),
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
            (
                self.report_to in REPORT_TO,
                f"--report-to {self.report_to}: choose one of {', '.join(REPORT_TO)}",
            ),
            (0 <= self.split_ratio < 1, f"--split-ratio {self.split_ratio}: must be in [0, 1)"),
            (not (self.split_ratio and self.val_dataset), "give --val-dataset or --split-ratio, not both"),
            (
                0 <= self.max_bad_fraction <= 1,
                f"--max-bad-fraction {self.max_bad_fraction}: must be in [0, 1]",
            ),
            (self.max_length > 0, f"--max-length {self.max_length}: must be positive"),
            (self.batch_size > 0 and self.grad_accum > 0, "--batch-size and --grad-accum must be positive"),
            (self.lr > 0, f"--lr {self.lr}: must be positive"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio {self.warmup_ratio}: must be in [0, 1)"),
            (0 < self.adam_beta2 < 1, f"--adam-beta2 {self.adam_beta2}: must be in (0, 1)"),
            (self.epochs > 0 or self.max_steps > 0, "--epochs must be positive (or set --max-steps)"),
            (
                self.eval_max_new_tokens > 0,
                f"--eval-max-new-tokens {self.eval_max_new_tokens}: must be positive",
            ),
            (self.lora_rank > 0, f"--lora-rank {self.lora_rank}: must be positive"),
            (self.encode_workers >= 0, f"--encode-workers {self.encode_workers}: must be 0 or more"),
            (
                not (self.freeze_vit and self.freeze_aligner and self.freeze_llm),
                "--freeze-vit, --freeze-aligner and --freeze-llm together leave nothing to train",
            ),
            (
                self.eval_steps > 0 and self.save_steps > 0 and self.logging_steps > 0,
                "--eval-steps, --save-steps and --logging-steps must be positive",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise VlmkitError(message)
        if self.streaming:  # rows are read as training goes: nothing that needs them all up front
            if self.max_steps <= 0:
                raise VlmkitError("--streaming needs --max-steps: a stream has no length to count epochs in")
            for given, option in ((self.val_dataset or self.split_ratio, "--val-dataset/--split-ratio"),
                                  (self.group_by_length, "--group-by-length")):  # fmt: skip
                if given:
                    raise VlmkitError(f"{option} needs every row up front; drop it with --streaming")
        if self.device_map:
            from vlmkit.placement import refuse_under_launcher

            refuse_under_launcher("--device-map splits the model over the GPUs of one process: run `vlmkit sft "
                                  "--device-map ...` without a launcher, or drop --device-map for data-parallel "
                                  "training", launcher="torchrun / accelerate launch")  # fmt: skip
        if self.eval_metric:
            from vlmkit.eval.metrics import metric_names

            # an unknown name fails here, before the model loads
            metric_names(self.eval_metric, "--eval-metric")
            if not (self.val_dataset or self.split_ratio):
                raise VlmkitError("--eval-metric scores validation rows: give --val-dataset or --split-ratio")
            if self.eval_metric_rows < 1:
                raise VlmkitError(f"--eval-metric-rows {self.eval_metric_rows}: must be at least 1")
        if self.save_best:
            if not self.eval_metric:
                raise VlmkitError("--save-best keeps the best checkpoint by --eval-metric; give --eval-metric NAME")
            if self.save_steps % self.eval_steps:
                raise VlmkitError(
                    f"--save-best: --save-steps {self.save_steps} must be a multiple of --eval-steps "
                    f"{self.eval_steps} (a checkpoint is kept only where it was scored)"
                )
            if self.save_total_limit is not None and self.save_total_limit < 2:
                raise VlmkitError("--save-best needs --save-total-limit 2 or more (the best and the last checkpoint)")
        return self

    @property
    def encoding(self) -> EncodingSettings:
        """The encoding fields (`with_encoding_fields`) as one `EncodingSettings` (flat here: YAML keys,
        args.json and the keyword arguments of `SFTConfig(...)` name them one by one)."""
        return EncodingSettings(**{name: getattr(self, name) for name in ENCODING_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(SFTConfig)}
assert set(ENCODING_FIELDS) <= set(FIELDS), "SFTConfig needs a field for every EncodingSettings field"


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file; keys as the flags (`lora-rank`) or as fields (`lora_rank`)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise VlmkitError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise VlmkitError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise VlmkitError(f"--config {path}: expected a mapping of option names to values")
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise VlmkitError(f"--config {path}: unknown option {key!r}; see `vlmkit sft --help`")
        if name in ("dataset", "val_dataset") and isinstance(value, str):
            value = [value]
        options[name] = value
    return options


def make_config(from_file: dict[str, Any], from_cli: dict[str, Any]) -> SFTConfig:
    """The config file's values, overridden by the flags given on the command line."""
    return SFTConfig(**{**from_file, **from_cli}).validate()
