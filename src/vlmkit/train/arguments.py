"""The Trainer's arguments for an `SFTConfig`: transformers' `TrainingArguments` (DeepSpeed presets, FSDP,
DDP over gloo on CPU) and what `--save-best` tracks."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from vlmkit.errors import VlmkitError
from vlmkit.train.config import SFTConfig
from vlmkit.train.trackers import trainer_report_to

DEEPSPEED_PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
        },
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    },
    "zero3": {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    },
}


def training_arguments(config: SFTConfig, torch_dtype, has_val: bool, output_dir: str, arguments: type | None = None):
    """transformers' TrainingArguments of `config` (`output_dir` is set again once the run folder exists).
    `arguments`: a subclass to build instead (TRL's config of its trainer), given the fields of its own that
    `config.trainer_arguments()` sets (they win: grpo counts its input tokens itself); None: TrainingArguments."""
    from transformers import TrainingArguments

    own = config.trainer_arguments() if arguments is not None else {}
    arguments = arguments or TrainingArguments
    fsdp_kwargs: dict[str, Any] = {}
    if config.fsdp:
        fsdp_kwargs = {"fsdp": f"{config.fsdp} auto_wrap", "fsdp_config": {"use_orig_params": True}}
    workers = (
        config.num_workers if config.num_workers is not None else (4 if torch.cuda.is_available() else 0)
    )
    return arguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_ratio,
        **_checkpointing_kwargs(arguments, config.gradient_checkpointing),
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy="steps" if has_val else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # CompleteCheckpoints rotates, after the new checkpoint is complete
        **_best_checkpoint_kwargs(config),
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to=trainer_report_to(config.report_to),
        dataloader_num_workers=workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,  # evaluation reports the loss; logits are only kept where supervised
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU use DDP over gloo
        ddp_backend="gloo"
        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        else None,
        deepspeed=DEEPSPEED_PRESETS[config.deepspeed] if config.deepspeed else None,
        **fsdp_kwargs,
        **{"include_num_input_tokens_seen": "non_padding", **own},
    )


def _checkpointing_kwargs(arguments_class: type, on: bool) -> dict[str, Any]:
    """--gradient-checkpointing in the spelling of the installed transformers: `activation_checkpointing`
    from 5.23 on (where `gradient_checkpointing` is a deprecated alias that warns), `gradient_checkpointing`
    before (vLLM pins transformers < 5.21, so both are in use)."""
    names = {f.name for f in dataclasses.fields(arguments_class)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: on, f"{prefix}_kwargs": {"use_reentrant": False} if on else None}


def save_best_by(config: SFTConfig) -> tuple[str, bool] | None:
    """--save-best: (the logged key of the first --eval-metric, lower is better), or None."""
    if not config.save_best:
        return None
    from vlmkit.eval.metrics import LOWER_IS_BETTER, metric_names

    first = metric_names(config.eval_metric, "--eval-metric")[0]
    return f"eval_{first}", first in LOWER_IS_BETTER


def _best_checkpoint_kwargs(config: SFTConfig) -> dict[str, Any]:
    """--save-best: the Trainer tracks the first --eval-metric (rotation keeps its best: CompleteCheckpoints)."""
    if (best_by := save_best_by(config)) is None:
        return {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # only the main process scores: others lack the metric
        raise VlmkitError("--save-best runs on one process for now; drop it for multi-process training")
    key, lower_is_better = best_by
    return {"metric_for_best_model": key, "greater_is_better": not lower_is_better}
