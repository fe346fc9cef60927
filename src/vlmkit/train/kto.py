"""`vlmkit kto`: preference tuning with images from replies labelled desirable or undesirable (KTO, Ethayarajh
et al. 2024), read top to bottom.

    from vlmkit.train.kto import kto
    from vlmkit.train.kto_config import KTOConfig
    run_dir = kto(KTOConfig(model="Qwen/Qwen2.5-VL-7B-Instruct", dataset=["kto.jsonl"], beta=0.1))

The run is `vlmkit dpo`'s (`vlmkit.train.dpo`): sft's model resolution, run folder, checkpoints and resume;
every row checked up front and one over --max-length refused, never cut; the reference model is the base
with the LoRA adapter disabled, or a frozen copy with --tuner full. What differs: the rows are labelled
conversations (`vlmkit.data.unpaired`; pairs become one desirable and one undesirable row), training is TRL's
KTOTrainer on batches encoded by the family template (`vlmkit.train.kto_data`), and the rows are shuffled
once with --seed (TRL's KTO reads them in order: each batch's KL conversations pair its rows' prompts with
their neighbours' replies).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from vlmkit.train.dpo import checked_rows, preference_trainer, read_with
from vlmkit.train.finetune import prepare_base, run_guard, start_run, train_run
from vlmkit.train.kto_config import KTOConfig
from vlmkit.train.run import print_result


def kto(config: KTOConfig) -> Path:
    """KTO-tune `config.model` on `config.dataset` (labelled rows, or pairs); returns the run folder."""
    from trl import KTOConfig as TrainerArguments

    from vlmkit.train.dpo_data import PairCollator
    from vlmkit.train.dpo_trainer import VlmKTOTrainer
    from vlmkit.train.kto_data import collate_unpaired

    base = prepare_base(config)
    run = start_run(config, base, read_unpaired_data, arguments=TrainerArguments)
    with run_guard(config, run) as guard:
        train_rows, val_rows = checked_rows(config, base, run)
        random.Random(config.seed).shuffle(train_rows)  # once: TRL's KTO samples its rows in order
        desirable = sum(run.train_data.labels(train_rows))
        trainer = preference_trainer(VlmKTOTrainer, config, base, run, train_rows, val_rows,
                                     lambda data, template: PairCollator(data, template, collate_unpaired))  # fmt: skip
        if run.is_main:
            _print_start(config, run, trainer, len(train_rows), desirable, len(val_rows))
        guard.started = True
        train_run(config, run, trainer)
        if run.is_main:
            print_result(run.dir)
    return run.dir


def read_unpaired_data(config: KTOConfig) -> tuple[Any, Any]:
    """(training rows, validation rows or None), read as they are stored (`vlmkit.data.unpaired`)."""
    from vlmkit.data.unpaired import load_unpaired_datasets

    return read_with(load_unpaired_datasets, config)


def _print_start(config: KTOConfig, run, trainer, rows: int, desirable: int, val_rows: int) -> None:
    from vlmkit.train.tuning import count_parameters

    if run.train_data.paired is not None:
        print("pairs unpaired: each pair is one desirable row (its chosen reply) and one undesirable row (its "
              "rejected reply), as TRL's unpair_preference_dataset makes them")  # fmt: skip
    if desirable in (0, rows):
        print(f"warning: all {rows} training rows are {'desirable' if desirable else 'undesirable'}; KTO trains on "
              "them, but rows of the other label teach it what to move away from (or towards)", file=sys.stderr)  # fmt: skip
    trainable, total = count_parameters(trainer.model)
    print(f"run folder: {run.dir}\ntrainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%), "
          f"tuner={config.tuner}, beta={config.beta}, desirable_weight={config.desirable_weight}, "
          f"undesirable_weight={config.undesirable_weight}, train rows={rows} ({desirable} desirable)"
          + (f", val rows={val_rows}" if val_rows else ""))  # fmt: skip
