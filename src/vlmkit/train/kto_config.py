"""`vlmkit kto`'s settings: every `SFTConfig` field (the shared option groups) plus `KTOOptions`.

from vlmkit.train.kto_config import KTOConfig
from vlmkit.train.kto import kto
run_dir = kto(KTOConfig(model="Qwen/Qwen2.5-VL-7B-Instruct", dataset=["kto.jsonl"], beta=0.1))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmkit.groups import option
from vlmkit.train.config import SFTConfig, with_group_fields
from vlmkit.train.dpo_config import refuse_unscored_options
from vlmkit.train.options import refuse


@dataclass(frozen=True)
class KTOOptions:
    beta: float = option(
        0.1, "How far the policy may move from the reference model: higher keeps it closer (KTO's beta)."
    )
    desirable_weight: float = option(
        1.0,
        "Weight of the desirable rows' loss (TRL's desirable_weight); with fewer desirable than undesirable rows, "
        "raise it so that weight x count is about even (KTO paper, eq. 8).",
    )
    undesirable_weight: float = option(
        1.0, "Weight of the undesirable rows' loss (TRL's undesirable_weight)."
    )

    def check(self) -> None:
        refuse([
            (self.beta > 0, f"--beta {self.beta}: must be positive"),
            (self.desirable_weight > 0 and self.undesirable_weight > 0,
             "--desirable-weight and --undesirable-weight must be positive"),
        ])  # fmt: skip


@dataclass
@with_group_fields(KTOOptions)
class KTOConfig(SFTConfig):
    def validate(self) -> KTOConfig:
        super().validate()
        self.group(KTOOptions).check()
        refuse_unscored_options(self, "kto")
        refuse([(self.batch_size >= 2, f"--batch-size {self.batch_size}: KTO needs 2 or more (it estimates its KL "
                                       "term from each row's prompt with another row's reply in the batch)")])  # fmt: skip
        return self

    def trainer_arguments(self) -> dict[str, Any]:
        """The fields of TRL's `KTOConfig` this run sets besides the TrainingArguments (`training_arguments`).
        max_length None: TRL cuts nothing; rows over --max-length are refused before training instead."""
        return {"beta": self.beta, "desirable_weight": self.desirable_weight, "loss_type": "kto",
                "undesirable_weight": self.undesirable_weight, "max_length": None}  # fmt: skip
