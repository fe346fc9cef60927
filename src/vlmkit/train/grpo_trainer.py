"""TRL's GRPOTrainer with vlmkit's encoding: the prompt the policy (and the reference model) sees is the
family template's `encode(sample, add_generation_prompt=True)`, the same call `vlmkit infer` makes, so
training and inference see the same ids, image tokens and pixel budget.

TRL reads prompts with a processor's chat template, which vlmkit does not use (one exact encoding per
family; a processor may not even load here, see DESIGN.md). So each TRL row carries only a `row` index
and its prompt text (for the completions table); `_tokenize_prompts` encodes the row's Sample, and the
images' model inputs (pixel_values, image_grid_thw, mm_token_type_ids, ...) go where TRL puts its
processor's: into every forward of the policy and the reference model, split per row as TRL splits them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from trl import GRPOTrainer, RLOOTrainer

from vlmkit.media.grounding import decode_reply
from vlmkit.train.callbacks import TrainerParts
from vlmkit.train.rewards import check_rewards

NOT_MEDIA = ("input_ids", "attention_mask", "labels")


class Prompts:
    """The rows' encoded prompts (cached by row index) and what the rewards read of each row."""

    CACHED = 1024  # encoded prompts kept (a generation batch's rows come back for every one of its steps)

    def __init__(self, dataset, template, solutions: list[Any]):
        self.dataset, self.template, self.solutions = dataset, template, solutions
        self._encoded: dict[int, dict[str, Any]] = {}
        self._sizes: dict[int, list] = {}

    def encoded(self, row: int) -> dict[str, Any]:
        if row not in self._encoded:
            if len(self._encoded) >= self.CACHED:
                self._encoded.pop(next(iter(self._encoded)))
            self._encoded[row] = self.template.encode(self.dataset[row], add_generation_prompt=True)
        return self._encoded[row]

    def image_sizes(self, row: int) -> list:
        """The row's [(original, resized) size per image] the box rewards map boxes through; [] for a template
        without grounding (it has no boxes to map, nor `image_sizes`: the generic path's)."""
        if row not in self._sizes:
            sample = self.dataset[row]
            grounded = self.template.box_format is not None and sample.media("image")
            self._sizes[row] = self.template.image_sizes(sample) if grounded else []
        return self._sizes[row]

    def media(self, rows: list[int]) -> dict[str, Any]:
        """The model inputs of the rows' images, batched as the template collates them (per-token fields
        left-padded like TRL's prompt ids), plus `num_images` per row."""
        batch = self.template.collate([self.encoded(r) for r in rows], padding_side="left")
        media = {k: v for k, v in batch.items() if k not in NOT_MEDIA}
        if media:
            media["num_images"] = [len(self.dataset[r].media("image")) for r in rows]
        return media


def _extend_per_token(media: dict[str, Any], rows: int, prompt_length: int, total_length: int) -> dict[str, Any]:
    """Per-token fields (rows, prompt_length) padded with zeros (text) on the right to (rows, total_length).
    Per-image fields (one row per image, a few columns) never have a prompt's length: a prompt with an image
    is longer than its image's few numbers."""
    out = {}
    for key, value in media.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (rows, prompt_length):
            value = torch.cat([value, value.new_zeros(value.size(0), total_length - prompt_length)], dim=1)
        out[key] = value
    return out


class TemplatePrompts:
    """What vlmkit adds to TRL's GRPOTrainer and RLOOTrainer (listed before it and sft's `TrainerParts` among their
    bases; both roll out and score through the same hooks): prompts encoded by vlmkit's family template (the
    module docstring), and sample rollouts for `sample_log`."""

    def __init__(self, *args, prompts: Prompts, parameter_groups, **kwargs):
        self._parameter_groups = parameter_groups
        super().__init__(*args, **kwargs)
        self.vlm_prompts = prompts
        self._pending_media: dict[str, Any] | None = None
        self.sample_log = None  # a `vlmkit.train.grpo_samples.SampleLog` on the main process
        self._rollouts: list = []  # the main process's latest scored rollouts, for `sample_log`

    def planned_steps(self) -> int:
        return self.args.max_steps

    def _tokenize_prompts(self, prompts: list):
        rows = self._batch_rows
        prompt_ids = [list(self.vlm_prompts.encoded(r)["input_ids"]) for r in rows]
        fields = {k: v for k, v in self._pending_media.items() if k != "num_images"} if self._pending_media else {}
        return prompt_ids, None, fields

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._batch_rows = [int(x["row"]) for x in inputs]
        self._pending_media = self.vlm_prompts.media(self._batch_rows)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            media, self._pending_media = self._pending_media, None
        if media:
            prompt_length, completion_length = output["prompt_ids"].size(1), output["completion_ids"].size(1)
            device = output["prompt_ids"].device
            media = _extend_per_token(media, len(self._batch_rows), prompt_length, prompt_length + completion_length)
            output.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in media.items()})
        if self.sample_log is not None:
            self._rollouts = self._scored_rollouts(output)
        return output

    def _scored_rollouts(self, output: dict[str, Any]) -> list:
        """The first `grpo_samples.SHOWN` rollouts of this batch. TRL's `_logs` hold the batch just scored,
        gathered in process order: this (main) process's rows come first."""
        from vlmkit.train.grpo_samples import SHOWN, Rollout

        box_format = self.vlm_prompts.template.box_format
        keep = box_format.keep_tokens if box_format is not None else ()
        rewards = {name: list(self._logs["rewards"][name]) for name in self.reward_func_names}
        weights = self.reward_weights.tolist()
        rollouts = []
        for k, row in enumerate(self._batch_rows[:SHOWN]):
            ids = output["completion_ids"][k][output["completion_mask"][k].bool()].tolist()
            values = {name: rewards[name][k] for name in self.reward_func_names}
            total = sum(w * v for w, v in zip(weights, values.values(), strict=True))
            completion = decode_reply(self.processing_class, ids, keep)
            rollouts.append(Rollout(row, completion, values, total, float(output["advantages"][k])))
        return rollouts

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self.sample_log is not None and self._rollouts and "loss" in logs:  # a training step's log
            self.sample_log.write(self.state.global_step, self._rollouts, self.callback_handler.callbacks)
            self._rollouts = []

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's, with the rows' image inputs added while completions are scored (TRL passes none: its
        rows have no images of their own)."""
        if self._pending_media and kwargs.get("pixel_values") is None:
            prompt_length = input_ids.size(1) - logits_to_keep
            media = _extend_per_token(self._pending_media, len(self._batch_rows), prompt_length, input_ids.size(1))
            kwargs.update({k: v.to(input_ids.device) if isinstance(v, torch.Tensor) else v for k, v in media.items()})
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)


class VlmGRPOTrainer(TemplatePrompts, TrainerParts, GRPOTrainer):
    """GRPOTrainer (GRPO, DAPO, Dr.GRPO, BNPO losses; GSPO) on prompts encoded by the family template, with sft's
    `TrainerParts` (parameter groups, capped warm-up, full weights resumed by their checkpoint names: without
    it a resumed full fine-tune silently went on from the base weights)."""


class VlmRLOOTrainer(TemplatePrompts, TrainerParts, RLOOTrainer):
    """RLOOTrainer (REINFORCE leave-one-out: each completion's baseline is the mean reward of its group's other
    completions) on prompts encoded by the family template, with sft's `TrainerParts`."""


def trl_reward(name: str, function: Callable, source: Prompts, tokenizer) -> Callable:
    """A vlmkit reward as TRL calls it: completions decoded again with the family's box tokens kept, the
    rows' solutions, image sizes and box format, and the rows' other columns as keyword arguments."""
    box_format = source.template.box_format
    keep = box_format.keep_tokens if box_format is not None else ()

    def reward(prompts, completions, completion_ids, row, log_metric=None, **_) -> list[float]:
        rows = [int(r) for r in row]
        texts = [decode_reply(tokenizer, ids, keep) for ids in completion_ids]
        columns: dict[str, list] = {}
        for r in rows:
            for key, value in source.dataset.rows[r].data.items():
                if key != "solution":
                    columns.setdefault(key, []).append(value)
        values = function(
            texts,
            [source.solutions[r] for r in rows],
            **{k: v for k, v in columns.items() if len(v) == len(rows)},
            box_format=box_format,
            image_sizes=[source.image_sizes(r) for r in rows],
            log_metric=log_metric,
        )
        return check_rewards(values, name)

    reward.__name__ = name
    return reward
