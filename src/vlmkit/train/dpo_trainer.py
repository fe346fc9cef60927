"""TRL's DPOTrainer (and KTOTrainer) fed vlmkit's batches: the loss, the reference model and the logged rewards are TRL's own;
the rows are encoded by vlmkit's family template (`vlmkit.train.dpo_data`) and the run has sft's trainer
parts (`TrainerParts`: parameter groups, capped warm-up, complete checkpoints, resume)."""

from __future__ import annotations

import warnings
from typing import Any

import datasets
from trl import DPOTrainer, KTOTrainer

from vlmkit.train.callbacks import TrainerParts
from vlmkit.train.dpo_data import PairCollator

# TRL 1.16 reads `model.is_gradient_checkpointing`, which transformers 5.23+ renamed (a FutureWarning at every
# step); the run's own setting is --gradient-checkpointing, passed as `activation_checkpointing`
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class IndexedRows:
    """What vlmkit's preference trainers add to TRL's (listed before it among their bases): datasets of row
    indices (`row_indices`) that their collator (`PairCollator`, one per split) encodes, and
    `parameter_groups(model, decay_names)`, the optimizer's groups (`vlmkit.train.tuning`)."""

    def __init__(self, *args, parameter_groups, eval_collator: PairCollator | None = None, **kwargs):
        self._parameter_groups = parameter_groups
        self._eval_collator = eval_collator
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # TRL tokenizes text rows here with the processor; vlmkit's rows are encoded by the collator instead
        return dataset

    def get_eval_dataloader(self, eval_dataset=None):
        """The validation rows index the validation data: they are collated by its own `PairCollator`."""
        if self._eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self._eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator


class VlmDPOTrainer(TrainerParts, IndexedRows, DPOTrainer):
    """DPOTrainer on vlmkit's pairs (`IndexedRows`)."""


class VlmKTOTrainer(TrainerParts, IndexedRows, KTOTrainer):
    """KTOTrainer on vlmkit's labelled rows (`IndexedRows`, `vlmkit.train.kto_data`). Its rows are read in the
    order given (TRL's KTO samples sequentially); `vlmkit kto` shuffles them once with --seed."""


def row_indices(rows: list[int]) -> Any:
    """The `datasets.Dataset` DPOTrainer takes, of one column: the index of each pair to train on."""
    return datasets.Dataset.from_dict({"row": rows})
