"""`vlmkit kto` against TRL driven directly, on a tiny Qwen2-VL and TRL's unpaired rows:

- each conversation is scored after the prompt `vlmkit infer` encodes (its `VLM.encode`), on the reply and its
  <|im_end|>; the KL conversations are row i's prompt (its image tokens too) with row i-1's reply;
- on one fixed batch (a desirable and an undesirable row), with a policy that differs from its reference (LoRA B
  set to random values), vlmkit's trainer gives the loss and logged metrics of TRL's KTOTrainer built as TRL's
  docs build it (a model, `KTOConfig(beta=...)`, a `LoraConfig`), and both equal KTO's formula computed here
  from plain transformers logits (reference: the same model with the adapter disabled).
"""

from __future__ import annotations

import pytest
import torch
from preference_rows import CHOSEN, REJECTED, unpaired_rows_in_every_format, write_jsonl

BETA = 0.3
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def setup(small_model, tmp_path_factory):
    """vlmkit's KTO trainer as `vlmkit kto` builds it (LoRA, --beta BETA) with its rows and template."""
    from trl import KTOConfig as TrainerArguments

    from vlmkit.train.dpo import preference_trainer, validated_pairs
    from vlmkit.train.dpo_data import PairCollator
    from vlmkit.train.dpo_trainer import VlmKTOTrainer
    from vlmkit.train.finetune import prepare_base, start_run
    from vlmkit.train.kto import read_unpaired_data
    from vlmkit.train.kto_config import KTOConfig
    from vlmkit.train.kto_data import collate_unpaired

    root = tmp_path_factory.mktemp("kto_parity")
    data = write_jsonl(root / "kto.jsonl", unpaired_rows_in_every_format(root)["trl"])
    config = KTOConfig(model=str(small_model), dataset=[str(data)], output_dir=str(root / "out"), beta=BETA,
                       desirable_weight=1.5, max_pixels=4000, batch_size=2, progress=False, report_to="none",
                       num_workers=0)  # fmt: skip
    base = prepare_base(config)
    run = start_run(config, base, read_unpaired_data, arguments=TrainerArguments)
    run.lock.close()
    rows = validated_pairs(run.train_data, config, base, run, "train")
    trainer = preference_trainer(VlmKTOTrainer, config, base, run, rows, [],
                                 lambda d, t: PairCollator(d, t, collate_unpaired))  # fmt: skip
    return {"trainer": trainer, "data": run.train_data, "template": base.template, "model": small_model}


def test_rows_are_scored_after_the_prompt_infer_encodes_and_kl_rows_take_the_previous_reply(setup):
    import vlmkit
    from vlmkit.train.dpo_data import prompt_of

    vlm = vlmkit.load(str(setup["model"]), max_pixels=4000)  # what `vlmkit infer --max-pixels 4000` encodes with
    batch = setup["trainer"].data_collator([{"row": 0}, {"row": 3}])
    assert batch["label"].tolist() == [True, False]
    replies = [CHOSEN[0], REJECTED[1]]
    for row, index in enumerate((0, 3)):
        prompt = vlm.encode(prompt_of(setup["data"][index][0]))["input_ids"].tolist()
        for prefix, reply in (("", replies[row]), ("KL_", replies[row - 1])):
            ids, scored = batch[f"{prefix}input_ids"][row], batch[f"{prefix}completion_mask"][row].bool()
            assert ids[: len(prompt)].tolist() == prompt  # infer's prompt, image tokens included
            assert not scored[: len(prompt)].any()
            assert vlm.tokenizer.decode(ids[scored]) == reply + "<|im_end|>"


def sequence_logps(model, batch: dict, prefix: str = "") -> torch.Tensor:
    """Sum over the scored tokens of log p(token | before), from the model's plain logits: (B,)."""
    media = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
    ids = batch[f"{prefix}input_ids"]
    logits = model(input_ids=ids, attention_mask=batch[f"{prefix}attention_mask"], **media,
                   mm_token_type_ids=batch[f"{prefix}mm_token_type_ids"]).logits[:, :-1].float()  # fmt: skip
    logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    return (logps * batch[f"{prefix}completion_mask"][:, 1:]).sum(-1)


@pytest.mark.slow
def test_loss_and_metrics_equal_trl_driven_directly_and_kto_formula(setup, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import KTOConfig, KTOTrainer

    ours = setup["trainer"]
    generator = torch.Generator().manual_seed(0)
    for name, param in ours.model.named_parameters():
        if "lora_B" in name:  # a policy away from its reference (a fresh adapter is the reference itself)
            param.data = torch.randn(param.shape, generator=generator) * 0.5
    batch = ours.data_collator([{"row": 0}, {"row": 3}])  # desirable, undesirable
    ours.model.train()
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch)
    logged = {k: v[-1] for k, v in ours._metrics["train"].items()}

    # TRL as its docs build it: a model, KTOConfig, a LoraConfig (the same layers and rank)
    model = AutoModelForImageTextToText.from_pretrained(setup["model"], dtype=torch.float32)
    lora = ours.model.peft_config["default"]
    trl = KTOTrainer(
        model=model,
        args=KTOConfig(output_dir=str(tmp_path), beta=BETA, desirable_weight=1.5, per_device_train_batch_size=2,
                       report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False, max_length=None),  # fmt: skip
        train_dataset=Dataset.from_dict({"prompt": ["q", "r"], "completion": ["a", "b"], "label": [True, False]}),
        processing_class=setup["template"].tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, target_modules=sorted(lora.target_modules)),
    )
    trl.model.load_state_dict(ours.model.state_dict())  # the same policy (and base) weights
    trl.model.train()
    with torch.no_grad():
        trl_loss = trl.compute_loss(trl.model, batch)
    trl_logged = {k: v[-1] for k, v in trl._metrics["train"].items()}
    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=1e-5)
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert logged[key] == pytest.approx(trl_logged[key], abs=1e-5), key

    # KTO's formula (eq. 7 of the paper, as TRL weighs it) from plain logits; reference = the adapter disabled
    with torch.no_grad():
        policy, policy_kl = sequence_logps(trl.model, batch), sequence_logps(trl.model, batch, "KL_")
        with trl.model.disable_adapter():
            reference, reference_kl = sequence_logps(trl.model, batch), sequence_logps(trl.model, batch, "KL_")
    kl = (policy_kl - reference_kl).mean().clamp(min=0)
    ratio = policy - reference  # (desirable, undesirable)
    desirable = 1.5 * (1 - torch.sigmoid(BETA * (ratio[0] - kl)))
    undesirable = 1 - torch.sigmoid(BETA * (kl - ratio[1]))
    assert kl.item() > 0  # the policy moved: the KL term is in the loss
    torch.testing.assert_close(loss, (desirable + undesirable) / 2, rtol=0, atol=1e-5)
    assert logged["kl"] == pytest.approx(kl.item(), abs=1e-4)
    assert logged["rewards/chosen"] == pytest.approx(BETA * ratio[0].item(), abs=1e-5)
    assert logged["logps/rejected"] == pytest.approx(policy[1].item(), abs=1e-4)
