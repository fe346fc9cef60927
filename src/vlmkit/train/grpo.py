"""`vlmkit grpo`: reinforcement fine-tuning with verifiable rewards on TRL's GRPOTrainer, read top to bottom.

    from vlmkit.train.grpo import grpo
    from vlmkit.train.grpo_options import GRPOConfig
    run_dir = grpo(GRPOConfig(model="Qwen/Qwen2.5-VL-3B-Instruct", dataset=["refcoco.jsonl"], reward="iou,format:0.2"))

Steps, shared with `vlmkit sft` (`vlmkit.train.finetune`) where they are the same: resolve the model and
template -> make (or resume) the run folder (args.json, vlmkit.json) -> read the prompts and their `solution`,
refusing up front any row whose prompt (image tokens included) and longest completion do not fit
--max-length -> load the model, freeze and wrap it -> train with TRL's GRPOTrainer, prompts encoded by the
family template (`vlmkit.train.grpo_trainer`) -> checkpoints `vlmkit infer --ckpt`, export and serve read.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError, VlmkitError
from vlmkit.train.finetune import (
    _load_model,
    _resumed_step,
    check_resume,
    prepare_base,
    run_guard,
    start_run,
    train_run,
)
from vlmkit.train.grpo_options import GRPOConfig
from vlmkit.train.rewards import NEEDS_BOXES, parse_reward_spec
from vlmkit.train.run import print_result


def grpo(config: GRPOConfig, callbacks: Sequence[Any] = ()) -> Path:
    """Train `config.model` with GRPO (or RLOO: --algorithm) on `config.dataset`'s prompts and solutions; returns
    the run folder."""
    import trl

    TrainerArguments = trl.RLOOConfig if config.algorithm == "rloo" else trl.GRPOConfig  # noqa: N806

    # TRL 1.16 asks every step for a name transformers 5 has deprecated; nothing the user can act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    rewards = parse_reward_spec(config.reward)  # a typo costs one line, before any weights load
    if config.streaming or config.packing or config.val_dataset or config.split_ratio:
        raise VlmkitError(
            "vlmkit grpo reads every prompt up front, does not pack and has no validation pass: drop --streaming, "
            "--packing, --val-dataset and --split-ratio"
        )
    config.packing = False
    base = prepare_base(config)
    needs_boxes = [name for name, _, _ in rewards if name in NEEDS_BOXES]
    if needs_boxes and base.template.box_format is None:
        raise VlmkitError(
            f"--reward {needs_boxes[0]} reads boxes, but {base.files.family.name} has no grounding box format"
        )
    run = start_run(config, base, arguments=TrainerArguments)
    with run_guard(config, run) as guard:
        prompts, rows = _read_prompts(config, base, run.train_data)
        check_resume(config, run)  # the same options and rows, or one line
        model = _load_model(config, base)
        trainer = _make_trainer(config, base, run, prompts, rows, rewards, model)
        for callback in callbacks:
            trainer.add_callback(callback)
        if run.is_main:
            loss = "rloo" if config.algorithm == "rloo" else config.loss
            print(f"run folder: {run.dir}\nprompts={len(rows)}, rewards: {config.reward}, loss={loss}")
        guard.started = True
        train_run(config, run, trainer)
        if run.is_main:
            print_result(run.dir)
    return run.dir


def _read_prompts(config: GRPOConfig, base, dataset):
    """(Prompts, TRL rows) of the training data. Every row is checked first (`vlmkit.data.prompts.prompt_problem`,
    as `vlmkit data check` counts them): it has a `solution`, and its prompt (image tokens included) plus
    --max-completion-length fits --max-length; a row that does not is refused in one line naming it (a cut image
    would train on a prompt the model never sees at inference)."""
    from vlmkit.data.prompts import prompt_problem
    from vlmkit.train.grpo_trainer import Prompts

    solutions, rows = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        raw = dataset.rows[index].data
        problem, _ = prompt_problem(sample, raw, base.template, config.max_length, config.max_completion_length)
        if problem is not None:
            raise DataError(f"{sample.where}: {problem[0]}")
        solutions.append(raw["solution"])
        rows.append({"prompt": sample.text("user"), "row": index})
    return Prompts(dataset, base.template, solutions), rows


def _make_trainer(config, base, run, prompts, rows, rewards, model):
    """VlmGRPOTrainer with vlmkit's run log and complete-checkpoint saving."""
    import datasets
    from transformers.trainer_callback import PrinterCallback

    from vlmkit.train.callbacks import RL_PANELS, RunLog
    from vlmkit.train.checkpoints import CompleteCheckpoints
    from vlmkit.train.grpo_samples import SampleLog
    from vlmkit.train.grpo_trainer import VlmGRPOTrainer, VlmRLOOTrainer, trl_reward
    from vlmkit.train.tuning import parameter_groups

    if base.template.image_token_id is not None:
        # a sampled image placeholder in a completion would leave more image tokens than image features in the
        # scoring forward (the model refuses the batch): the rollouts never write one
        run.args.generation_kwargs = {**(run.args.generation_kwargs or {}), "suppress_tokens": [base.template.image_token_id]}
    trainer_class = VlmRLOOTrainer if config.algorithm == "rloo" else VlmGRPOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=[trl_reward(name, function, prompts, base.tokenizer) for name, function, _ in rewards],
        args=run.args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=base.tokenizer,
        prompts=prompts,
        parameter_groups=lambda m, decay: parameter_groups(m, config, base.files.family.module_groups, decay),
        callbacks=[
            RunLog(run.dir, config.batch_size * config.grad_accum * run.args.world_size, config.progress, RL_PANELS),
            CompleteCheckpoints(run.dir, Path(base.files.model_dir), run.settings, keep=config.save_total_limit),
        ],
    )
    trainer.remove_callback(PrinterCallback)
    if run.is_main:
        trainer.sample_log = SampleLog(run.dir, prompts)
        trainer.sample_log.start(_resumed_step(run.resume_from) if run.resume_from else 0)
    return trainer

