"""`vlmkit dpo` against TRL driven directly, on a tiny Qwen2-VL and RLAIF-V rows:

- the prompt the policy and the reference score the replies after is the one `vlmkit infer` encodes (its
  `VLM.encode`), and the scored tokens are the reply and its <|im_end|>, as sft supervises them;
- on one fixed batch, with a policy that differs from its reference (LoRA B set to random values), vlmkit's
  trainer gives the loss, rewards and log-probabilities of TRL's DPOTrainer built as TRL's docs build it (a model,
  `DPOConfig(beta=...)`, a `LoraConfig`), and both equal DPO's formula computed here from plain transformers
  logits (reference: the same model with the adapter disabled).
"""

from __future__ import annotations

import pytest
import torch
from preference_rows import CHOSEN, rows_in_every_format, write_jsonl

BETA = 0.3
# TRL 1.16 reads transformers' renamed `is_gradient_checkpointing` (vlmkit.train.dpo_trainer silences it for runs)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def setup(small_model, tmp_path_factory):
    """vlmkit's DPO trainer as `vlmkit dpo` builds it (LoRA, --beta BETA) with its rows and template."""
    from trl import DPOConfig as TrainerArguments

    from vlmkit.train.dpo import make_trainer, read_preference_data, validated_pairs
    from vlmkit.train.dpo_config import DPOConfig
    from vlmkit.train.finetune import prepare_base, start_run

    root = tmp_path_factory.mktemp("dpo_parity")
    data = write_jsonl(root / "rlaif-v.jsonl", rows_in_every_format(root)["rlaif-v"])
    config = DPOConfig(model=str(small_model), dataset=[str(data)], output_dir=str(root / "out"), beta=BETA,
                       max_pixels=4000, batch_size=2, progress=False, report_to="none", num_workers=0)  # fmt: skip
    base = prepare_base(config)
    run = start_run(config, base, read_preference_data, arguments=TrainerArguments)
    run.lock.close()
    trainer = make_trainer(config, base, run, validated_pairs(run.train_data, config, base, run, "train"), [])
    return {"trainer": trainer, "data": run.train_data, "template": base.template, "model": small_model, "root": root}


def test_the_policy_scores_the_replies_after_the_prompt_infer_encodes(setup):
    import vlmkit
    from vlmkit.train.dpo_data import collate_pairs, prompt_of

    vlm = vlmkit.load(str(setup["model"]), max_pixels=4000)  # what `vlmkit infer --max-pixels 4000` encodes with
    pairs = [setup["data"][i] for i in range(2)]
    batch = collate_pairs(setup["template"], pairs)
    for row, (pair, side) in enumerate([(p, "chosen") for p in pairs] + [(p, "rejected") for p in pairs]):
        sample = getattr(pair, side)
        prompt = vlm.encode(prompt_of(sample))["input_ids"].tolist()
        ids, scored = batch["input_ids"][row], batch["completion_mask"][row].bool()
        assert ids[: len(prompt)].tolist() == prompt  # the policy's prompt is infer's, image tokens included
        assert not scored[: len(prompt)].any()
        reply = sample.messages[-1]["content"][0]["text"]
        assert vlm.tokenizer.decode(ids[scored]) == reply + "<|im_end|>"  # the reply and its end, nothing else
    assert pairs[0].chosen.messages[-1]["content"][0]["text"] == CHOSEN[0]


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Sum over the scored tokens of log p(token | before), from the model's plain logits: (2B,)."""
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    logits = model(**inputs).logits[:, :-1].float()  # (2B, T-1, V)
    targets = batch["input_ids"][:, 1:]
    logps = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # (2B, T-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


@pytest.mark.slow
def test_loss_and_rewards_equal_trl_driven_directly_and_dpo_formula(setup, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    ours = setup["trainer"]
    generator = torch.Generator().manual_seed(0)
    for name, param in ours.model.named_parameters():
        if "lora_B" in name:  # a policy away from its reference (a fresh adapter is the reference itself)
            param.data = torch.randn(param.shape, generator=generator) * 0.5
    batch = ours.data_collator([{"row": 0}, {"row": 1}])
    ours.model.train()
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch)
    logged = {k: v[-1] for k, v in ours._metrics["train"].items()}

    # TRL as its docs build it: a model, DPOConfig, a LoraConfig (the same layers and rank)
    model = AutoModelForImageTextToText.from_pretrained(setup["model"], dtype=torch.float32)
    lora = ours.model.peft_config["default"]
    trl = DPOTrainer(
        model=model,
        args=DPOConfig(output_dir=str(tmp_path), beta=BETA, per_device_train_batch_size=2, report_to="none",
                       use_cpu=True, bf16=False, activation_checkpointing=False, max_length=None),  # fmt: skip
        train_dataset=Dataset.from_dict({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}),
        processing_class=setup["template"].tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, target_modules=sorted(lora.target_modules)),
    )
    trl.model.load_state_dict(ours.model.state_dict())  # the same policy (and base) weights
    trl.model.train()
    with torch.no_grad():
        trl_loss = trl.compute_loss(trl.model, batch)
    trl_logged = {k: v[-1] for k, v in trl._metrics["train"].items()}
    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert logged[key] == pytest.approx(trl_logged[key], abs=1e-5), key

    # DPO's formula from plain logits: the policy, and the reference = the adapter disabled
    with torch.no_grad():
        policy = sequence_logps(trl.model, batch)
        with trl.model.disable_adapter():
            reference = sequence_logps(trl.model, batch)
    chosen, rejected = (policy - reference).chunk(2)
    expected = -torch.nn.functional.logsigmoid(BETA * (chosen - rejected)).mean()
    assert loss.item() != pytest.approx(0.6931, abs=1e-3)  # not the trivial value of policy == reference
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    assert logged["rewards/chosen"] == pytest.approx(BETA * chosen.mean().item(), abs=1e-5)
    assert logged["logps/rejected"] == pytest.approx(policy.chunk(2)[1].mean().item(), abs=1e-4)
