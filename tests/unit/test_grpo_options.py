"""`vlmkit grpo`'s options: the checks of `GRPOConfig` (one line naming the option) and `--config run.yaml`
keys for the GRPO options."""

from __future__ import annotations

import dataclasses

import pytest

from vlmkit.errors import VlmkitError
from vlmkit.train.config import read_yaml_config
from vlmkit.train.grpo_options import GRPOConfig


def test_grpo_config_checks_name_the_option():
    GRPOConfig(model="m", dataset=["d.jsonl"], reward="iou", batch_size=4, num_generations=4).validate()
    with pytest.raises(VlmkitError, match=r"--batch-size x --grad-accum \(6\) must be a multiple of --num-generations \(4\)"):
        GRPOConfig(model="m", dataset=["d.jsonl"], reward="iou", batch_size=3, grad_accum=2, num_generations=4).validate()
    with pytest.raises(VlmkitError, match="--reward is required"):
        GRPOConfig(model="m", dataset=["d.jsonl"], batch_size=4).validate()
    with pytest.raises(VlmkitError, match="--loss ppo: choose one of grpo, dapo, dr_grpo, bnpo"):
        GRPOConfig(model="m", dataset=["d.jsonl"], reward="iou", loss="ppo", batch_size=4).validate()


def test_yaml_config_takes_the_grpo_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("reward: iou,format:0.2\nnum-generations: 8\nlr: 1.0e-6\n")
    fields = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    assert read_yaml_config(path, fields, "grpo") == {"reward": "iou,format:0.2", "num_generations": 8, "lr": 1e-6}
    with pytest.raises(VlmkitError, match="unknown option 'reward'"):
        read_yaml_config(path)  # sft's config has no reward


def test_rloo_takes_its_own_options_and_refuses_grpos():
    """--algorithm rloo runs TRL's RLOOTrainer: its RLOOConfig fields are set (--normalize-advantages), GRPO's
    loss options are refused in one line rather than silently dropped."""
    from trl import RLOOConfig

    base = {"model": "m", "dataset": ["d.jsonl"], "reward": "accuracy", "batch_size": 4}
    rloo = GRPOConfig(**base, algorithm="rloo", normalize_advantages=True).validate()
    arguments = rloo.trainer_arguments()
    assert arguments["normalize_advantages"] is True and "loss_type" not in arguments
    assert set(arguments) - {"include_num_input_tokens_seen"} <= {f.name for f in dataclasses.fields(RLOOConfig)}
    with pytest.raises(VlmkitError, match="--algorithm ppo: choose one of grpo, rloo"):
        GRPOConfig(**base, algorithm="ppo").validate()
    with pytest.raises(VlmkitError, match="--loss and --importance-sampling-level are GRPO's; --algorithm rloo"):
        GRPOConfig(**base, algorithm="rloo", loss="dapo").validate()
    with pytest.raises(VlmkitError, match="--normalize-advantages is for --algorithm rloo"):
        GRPOConfig(**base, normalize_advantages=True).validate()
