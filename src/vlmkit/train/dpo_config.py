"""`vlmkit dpo`'s settings: every `SFTConfig` field (the shared option groups) plus `PreferenceOptions`.

from vlmkit.train.dpo_config import DPOConfig
from vlmkit.train.dpo import dpo
run_dir = dpo(DPOConfig(model="Qwen/Qwen2.5-VL-7B-Instruct", dataset=["rlaif_v.parquet"], beta=0.1))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlmkit.groups import option
from vlmkit.train.config import SFTConfig, with_group_fields
from vlmkit.train.options import refuse

# the DPOTrainer losses of TRL 1.16 offered here; ORPO and SimPO are not losses of that trainer (they are
# trl.experimental's ORPOTrainer / CPOTrainer), so they are not offered
LOSSES = {
    "sigmoid": "DPO's loss (Rafailov et al. 2023): -log sigmoid(beta x margin)",
    "ipo": "IPO (Azar et al. 2023): squared distance of the per-token margin to 1 / (2 beta)",
    "hinge": "SLiC's hinge loss: relu(1 - beta x margin)",
}
# options of the shared groups that preference tuning does not have (a pair is two sequences, scored whole)
NOT_FOR_DPO = {
    "data": ("columns", "prompt", "split_ratio", "streaming", "packing", "group_by_length", "truncation"),
    "evaluation": ("eval_generate", "eval_max_new_tokens", "eval_metric", "eval_metric_rows", "save_best"),
    "engine": ("encode_cache", "cache_dir", "encode_workers"),  # pairs are encoded as batches are made
}


@dataclass(frozen=True)
class PreferenceOptions:
    beta: float = option(
        0.1,
        "How far the policy may move from the reference model: higher keeps it closer (DPO's beta; IPO's tau).",
    )
    loss: str = option(
        "sigmoid",
        "The preference loss (TRL's DPOTrainer): sigmoid (DPO), ipo or hinge. The reference model is the model "
        "as it starts: with --tuner lora the base with the adapter disabled, with --tuner full a frozen copy.",
    )

    def check(self) -> None:
        refuse([
            (self.beta > 0, f"--beta {self.beta}: must be positive"),
            (self.loss in LOSSES, f"--loss {self.loss}: choose one of {', '.join(LOSSES)}"),
        ])  # fmt: skip


@dataclass
@with_group_fields(PreferenceOptions)
class DPOConfig(SFTConfig):
    def validate(self) -> DPOConfig:
        super().validate()
        self.group(PreferenceOptions).check()
        refuse_unscored_options(self, "dpo")
        return self

    def trainer_arguments(self) -> dict[str, Any]:
        """The fields of TRL's `DPOConfig` this run sets besides the TrainingArguments (`training_arguments`).
        max_length None: TRL cuts nothing; pairs over --max-length are refused before training instead."""
        return {"beta": self.beta, "loss_type": [self.loss], "max_length": None}


def refuse_unscored_options(config: SFTConfig, command: str) -> None:
    """Refuse the shared options a preference run (`vlmkit dpo`, `vlmkit kto`) has no use for, set from a
    --config file or the Python API (the CLI does not offer them), and resolve --packing to off."""
    refuse([
        (not config.streaming, f"--streaming: vlmkit {command} checks every row up front; drop --streaming"),
        (not config.packing, f"--packing: vlmkit {command} scores each conversation whole; use --no-packing"),
        (not config.split_ratio, f"--split-ratio: give vlmkit {command} a --val-dataset instead"),
        (not config.eval_metric and not config.save_best,
         f"--eval-metric/--save-best: not available for vlmkit {command}"),
    ])  # fmt: skip
    config.packing = False  # resolved: never packed (its default, None, means "by family" for sft)


DPO_FIELDS = {f.name: f for f in dataclasses.fields(DPOConfig)}
