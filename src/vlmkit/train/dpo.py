"""`vlmkit dpo`: preference tuning with images, read top to bottom.

    from vlmkit.train.dpo import dpo
    from vlmkit.train.dpo_config import DPOConfig
    run_dir = dpo(DPOConfig(model="Qwen/Qwen2.5-VL-7B-Instruct", dataset=["rlaif_v.parquet"], beta=0.1))

The run is sft's (`vlmkit.train.finetune`): the same model resolution, run folder, args.json and vlmkit.json,
checkpoints that `vlmkit infer --ckpt`, `export` and `serve` load, resume, trackers. What differs: the rows
are preference pairs (`vlmkit.data.preference`), every pair is checked up front and one that does not fit
--max-length is refused (never cut), and training is TRL's DPOTrainer on batches encoded by the family
template (`vlmkit.train.dpo_data`). The reference model is the model as it starts: with LoRA the base model
with the adapter disabled (TRL wraps the model with the run's LoRA config), with a full fine-tune a frozen
copy loaded alongside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmkit.train.dpo_config import DPOConfig
from vlmkit.train.finetune import (
    _Base,
    _Run,
    check_resume,
    load_base_weights,
    prepare_base,
    run_guard,
    start_run,
    train_run,
)
from vlmkit.train.run import print_result


def dpo(config: DPOConfig) -> Path:
    """Preference-tune `config.model` on `config.dataset` (pairs); returns the run folder."""
    from trl import DPOConfig as TrainerArguments

    base = prepare_base(config)
    run = start_run(config, base, read_preference_data, arguments=TrainerArguments)
    with run_guard(config, run) as guard:
        train_rows, val_rows = checked_rows(config, base, run)
        trainer = make_trainer(config, base, run, train_rows, val_rows)
        if run.is_main:
            print(f"run folder: {run.dir}\n{_parameters_line(trainer.model, config)}, train pairs={len(train_rows)}"
                  + (f", val pairs={len(val_rows)}" if val_rows else ""))  # fmt: skip
        guard.started = True
        train_run(config, run, trainer)
        if run.is_main:
            print_result(run.dir)
    return run.dir


def read_preference_data(config: DPOConfig) -> tuple[Any, Any]:
    """(training pairs, validation pairs or None), read as they are stored (`vlmkit.data.preference`)."""
    from vlmkit.data.preference import load_preference_datasets

    return read_with(load_preference_datasets, config)


def read_with(load: Callable[..., Any], config: DPOConfig) -> tuple[Any, Any]:
    """(`load` of --dataset, of --val-dataset or None): `load(specs, media_root, seed)`."""
    train = load(config.dataset, config.media_root, config.seed)
    return train, load(config.val_dataset, config.media_root, config.seed) if config.val_dataset else None


def checked_rows(config: DPOConfig, base: _Base, run: _Run) -> tuple[list[int], list[int]]:
    """(training, validation) row indices after `validated_pairs`; on a resume, the run's args and data
    checked against the checkpoint's."""
    train_rows = validated_pairs(run.train_data, config, base, run, "train")
    val_rows = validated_pairs(run.val_data, config, base, run, "val") if run.val_data is not None else []
    check_resume(config, run)
    return train_rows, val_rows


def validated_pairs(data, config: DPOConfig, base: _Base, run: _Run, name: str) -> list[int]:
    """The indices of the pairs to train on, after checking every pair (bad ones listed in bad_samples.jsonl,
    the run stopped when more than --max-bad-fraction are bad, as sft does)."""
    from vlmkit.data.preference import check_pairs
    from vlmkit.train.sets import judge_report

    report = check_pairs(data, base.template, config.max_length, progress=config.progress and run.is_main)
    judge_report(report, config, run.dir, name, run.is_main)
    return [good.index for good in report.good]


def make_trainer(config: DPOConfig, base: _Base, run: _Run, train_rows: list[int], val_rows: list[int]):
    """TRL's DPOTrainer (as `VlmDPOTrainer`) with the policy, its reference and vlmkit's run callbacks."""
    from vlmkit.train.dpo_data import PairCollator
    from vlmkit.train.dpo_trainer import VlmDPOTrainer

    return preference_trainer(VlmDPOTrainer, config, base, run, train_rows, val_rows, PairCollator)


def preference_trainer(trainer_class, config, base: _Base, run: _Run, train_rows: list[int], val_rows: list[int],
                       collator: Callable[[Any, Any], Any]):  # fmt: skip
    """`trainer_class` (a TRL preference trainer with `IndexedRows`) on the rows `train_rows` / `val_rows` of the
    run's data, batched by `collator(data, template)`, with the policy, its reference (the base with the LoRA
    adapter disabled, or a frozen copy with --tuner full) and vlmkit's run callbacks."""
    from transformers.trainer_callback import PrinterCallback

    from vlmkit.train.callbacks import PREFERENCE_PANELS, ChangeCheck, RunLog
    from vlmkit.train.checkpoints import CompleteCheckpoints
    from vlmkit.train.dpo_trainer import row_indices
    from vlmkit.train.tuning import apply_tuning, lora_config, parameter_groups

    groups = base.files.family.module_groups
    model = load_base_weights(config, base)
    peft_config, ref_model = None, None
    if config.tuner == "lora":  # TRL wraps it; its reference is then the base with the adapter disabled
        peft_config = lora_config(model, config, groups)
        for param in model.parameters():
            param.requires_grad = False
    else:
        model = apply_tuning(model, config, groups)
        ref_model = load_base_weights(config, base).eval().requires_grad_(False)
    trainer = trainer_class(
        model=model,
        ref_model=ref_model,
        peft_config=peft_config,
        args=run.args,
        train_dataset=row_indices(train_rows),
        eval_dataset=row_indices(val_rows) if val_rows else None,
        data_collator=collator(run.train_data, base.template),
        eval_collator=collator(run.val_data, base.template) if val_rows else None,
        processing_class=base.tokenizer,
        parameter_groups=lambda m, decay: parameter_groups(m, config, groups, decay),
        callbacks=[
            RunLog(run.dir, config.batch_size * config.grad_accum * run.args.world_size, config.progress, PREFERENCE_PANELS),
            CompleteCheckpoints(
                run.dir, Path(base.files.model_dir), run.settings, keep=config.save_total_limit
            ),
            ChangeCheck(),
        ],
    )
    trainer.remove_callback(PrinterCallback)  # RunLog shows progress and logs instead
    return trainer


def _parameters_line(model, config: DPOConfig) -> str:
    from vlmkit.train.tuning import count_parameters

    trainable, total = count_parameters(model)
    return (f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%), tuner={config.tuner}, "
            f"loss={config.loss}, beta={config.beta}")  # fmt: skip
