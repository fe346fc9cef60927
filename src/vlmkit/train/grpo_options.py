"""The options `vlmkit grpo` adds to sft's groups (`GRPOOptions`), and `GRPOConfig`, the flat record of a
GRPO run: every `SFTConfig` field plus these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmkit.groups import option
from vlmkit.train.config import SFTConfig, with_group_fields
from vlmkit.train.options import refuse

ALGORITHMS = ("grpo", "rloo")
LOSSES = ("grpo", "dapo", "dr_grpo", "bnpo")
IMPORTANCE_LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class GRPOOptions:
    algorithm: str = option(
        "grpo",
        "grpo (TRL's GRPOTrainer: advantages are rewards less their group's mean, over its std) or rloo "
        "(TRL's RLOOTrainer, REINFORCE leave-one-out: each completion's baseline is the mean reward of the "
        "group's other completions; the KL to the reference is taken off the reward).",
    )
    reward: str | None = option(
        None,
        "Rewards, comma-separated, each NAME[:WEIGHT] (default weight 1): accuracy, count, iou, iou@0.5, format, "
        "box_format, length, repetition, or your own module:function / file.py:function, e.g. iou:1,format:0.2.",
    )
    loss: str = option("grpo", "Policy loss (TRL's loss_type): grpo, dapo, dr_grpo or bnpo.")
    importance_sampling_level: str = option(
        "token", "token (GRPO) or sequence (GSPO: one importance ratio per completion)."
    )
    num_generations: int = option(4, "Completions sampled per prompt (the group rewards are compared in).")
    max_completion_length: int = option(128, "Longest completion in tokens.")
    temperature: float = option(1.0, "Sampling temperature of the rollouts.")
    beta: float = option(0.04, "Weight of the KL penalty to the starting model (0: no reference model, no KL).")
    epsilon: float = option(0.2, "Clipping range of the importance ratio.")
    normalize_advantages: bool = option(
        False,
        "--algorithm rloo: scale the advantages of each generation batch to mean 0 and std 1 (TRL's "
        "normalize_advantages).",
        flags=("--normalize-advantages/--no-normalize-advantages",),
    )
    use_vllm: bool = option(
        False,
        "Roll out with vLLM colocated on the training GPU (TRL's use_vllm, vllm_mode colocate; GPU only, unverified "
        "by vlmkit's tests). Default: transformers generate.",
        flags=("--use-vllm/--no-use-vllm",),
    )

    def check(self) -> None:
        rloo = self.algorithm == "rloo"
        refuse([
            (self.algorithm in ALGORITHMS, f"--algorithm {self.algorithm}: choose one of {', '.join(ALGORITHMS)}"),
            (not rloo or (self.loss, self.importance_sampling_level) == ("grpo", "token"),
             "--loss and --importance-sampling-level are GRPO's; --algorithm rloo has its own loss (leave them out)"),
            (rloo or not self.normalize_advantages,
             "--normalize-advantages is for --algorithm rloo (GRPO divides by its group's std already)"),
            (bool(self.reward), "--reward is required: e.g. --reward accuracy or --reward iou,format:0.2"),
            (self.loss in LOSSES, f"--loss {self.loss}: choose one of {', '.join(LOSSES)}"),
            (self.importance_sampling_level in IMPORTANCE_LEVELS,
             f"--importance-sampling-level {self.importance_sampling_level}: token or sequence"),
            (self.num_generations >= 2, "--num-generations must be 2 or more (rewards are compared within a group)"),
            (self.max_completion_length > 0, "--max-completion-length must be positive"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.beta >= 0 and self.epsilon > 0, "--beta must be >= 0 and --epsilon positive"),
        ])  # fmt: skip


@dataclass
@with_group_fields(GRPOOptions)
class GRPOConfig(SFTConfig):
    def validate(self) -> GRPOConfig:
        super().validate()
        self.group(GRPOOptions).check()
        batch = self.batch_size * self.grad_accum
        if batch % self.num_generations:
            from vlmkit.errors import VlmkitError

            raise VlmkitError(
                f"--batch-size x --grad-accum ({batch}) must be a multiple of --num-generations "
                f"({self.num_generations}): each prompt's completions are trained together"
            )
        return self

    def trainer_arguments(self) -> dict[str, Any]:
        """The fields of TRL's `GRPOConfig` this run sets besides the TrainingArguments (`training_arguments`)."""
        from vlmkit.train.rewards import parse_reward_spec

        shared = {
            "num_generations": self.num_generations, "max_completion_length": self.max_completion_length,
            "temperature": self.temperature, "beta": self.beta, "epsilon": self.epsilon,
            "reward_weights": [weight for _, _, weight in parse_reward_spec(self.reward)],
            "use_vllm": self.use_vllm, "vllm_mode": "colocate",
            "include_num_input_tokens_seen": "no",  # TRL counts prompt and completion tokens itself
        }  # fmt: skip
        if self.algorithm == "rloo":  # TRL's RLOOConfig
            return {**shared, "normalize_advantages": self.normalize_advantages}
        return {**shared, "loss_type": self.loss, "importance_sampling_level": self.importance_sampling_level}
