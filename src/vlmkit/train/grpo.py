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
from vlmkit.train.finetune import _load_model, prepare_base, run_guard, start_run, train_run
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
    """(Prompts, TRL rows) of the training data. Every row is checked first: it has a `solution`, and its
    prompt (image tokens included) plus --max-completion-length fits --max-length; a row that does not is
    refused in one line naming it (a cut image would train on a prompt the model never sees at inference)."""
    from vlmkit.train.grpo_trainer import Prompts

    solutions, rows = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        where = sample.where
        raw = dataset.rows[index].data
        if raw.get("solution") is None:
            raise DataError(f"{where}: no 'solution' (the answer the rewards check the completions against)")
        if sample.messages and sample.messages[-1]["role"] == "assistant":
            raise DataError(f"{where}: ends with an assistant reply; a GRPO row is a prompt (and a solution)")
        length = base.template.count_tokens(sample, add_generation_prompt=True)
        if length + config.max_completion_length > config.max_length:
            raise DataError(
                f"{where}: the prompt is {length} tokens (image tokens included), which with "
                f"--max-completion-length {config.max_completion_length} is over --max-length {config.max_length}; "
                "image tokens are never cut: raise --max-length or lower --max-pixels"
            )
        solutions.append(raw["solution"])
        rows.append({"prompt": sample.text("user"), "row": index})
    return Prompts(dataset, base.template, solutions), rows


def _make_trainer(config, base, run, prompts, rows, rewards, model):
    """VlmGRPOTrainer with vlmkit's run log and complete-checkpoint saving."""
    import datasets
    from transformers.trainer_callback import PrinterCallback

    from vlmkit.train.callbacks import RunLog
    from vlmkit.train.checkpoints import CompleteCheckpoints
    from vlmkit.train.grpo_trainer import VlmGRPOTrainer, VlmRLOOTrainer, trl_reward

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
        callbacks=[
            RunLog(run.dir, config.batch_size * config.grad_accum * run.args.world_size, config.progress),
            CompleteCheckpoints(run.dir, Path(base.files.model_dir), run.settings, keep=config.save_total_limit),
        ],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer

