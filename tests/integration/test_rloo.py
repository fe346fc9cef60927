"""`vlmkit grpo --algorithm rloo` (TRL's RLOOTrainer: REINFORCE leave-one-out) the way a user runs it: grpo's
prompts with a `solution`, the `accuracy` reward, LoRA on a tiny Qwen2-VL, 2 steps; the reward components in
train_log.jsonl; the checkpoint answers through `vlmkit infer --ckpt`; and the advantages the trainer computes
are leave-one-out (each completion's reward less the mean of its group's other completions), by hand."""

from __future__ import annotations

import json

import pytest
import torch
from test_grpo import vlmkit, write_rows

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")]


@pytest.fixture(scope="module")
def rloo_run(small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rloo")
    write_rows(folder)
    done = vlmkit(
        "grpo", "--algorithm", "rloo", "--model", str(small_model), "--dataset", "prompts.jsonl", "--reward", "accuracy",
        "--max-steps", "2", "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "6",
        "--lr", "1e-3", "--save-steps", "2", "--output-dir", "out", "--report-to", "none", "--no-progress",
        "--seed", "0", cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done


def test_rloo_logs_its_rewards_and_its_checkpoint_answers_through_infer(rloo_run):
    folder, done = rloo_run
    assert done.stderr == "", done.stderr  # correct input is silent
    assert "loss=rloo" in done.stdout
    [run_dir] = (folder / "out").glob("*/v*")
    logs = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    first = logs[0]
    for key in ("rewards/accuracy/mean", "reward", "kl", "completions/mean_length"):
        assert key in first, sorted(first)
    assert json.loads((run_dir / "args.json").read_text())["algorithm"] == "rloo"
    answered = vlmkit("infer", "--ckpt", str(run_dir / "checkpoint-2"), "--input", "prompts.jsonl", "--output",
                      "preds.jsonl", "--max-new-tokens", "3", cwd=folder)  # fmt: skip
    assert answered.returncode == 0 and answered.stderr == "", answered.stderr[-2000:]
    predictions = [json.loads(line) for line in (folder / "preds.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(isinstance(p["response"], str) for p in predictions)


def test_rloo_advantages_are_leave_one_out(small_model, tmp_path, monkeypatch):
    """A reward of 0, 1, 3, 7 for a prompt's 4 completions (no KL: --beta 0): RLOO's advantage of each is its
    reward less the mean of the other three (GRPO's would be (r - 2.75) / std)."""
    from vlmkit.train.grpo import grpo
    from vlmkit.train.grpo_options import GRPOConfig
    from vlmkit.train.grpo_trainer import VlmRLOOTrainer

    write_rows(tmp_path, 1)
    (tmp_path / "fixed.py").write_text(
        "def ranks(completions, solutions, **row):\n    return [float(2 ** i - 1) for i in range(len(completions))]\n"
    )
    monkeypatch.chdir(tmp_path)
    scored = []
    original = VlmRLOOTrainer._generate_and_score_completions

    def recording(self, inputs):
        scored.append(original(self, inputs))
        return scored[-1]

    monkeypatch.setattr(VlmRLOOTrainer, "_generate_and_score_completions", recording)
    config = GRPOConfig(model=str(small_model), dataset=["prompts.jsonl"], reward="fixed.py:ranks", algorithm="rloo",
                        beta=0.0, batch_size=4, num_generations=4, max_completion_length=4, max_steps=1,
                        output_dir="out", report_to="none", progress=False, num_workers=0).validate()  # fmt: skip
    grpo(config)
    rewards = torch.tensor([0.0, 1.0, 3.0, 7.0])
    leave_one_out = rewards - (rewards.sum() - rewards) / 3
    torch.testing.assert_close(scored[0]["advantages"].cpu(), leave_one_out)
