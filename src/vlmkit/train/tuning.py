"""Which parameters train: freezing by module group, LoRA targets, per-group learning rates.

Groups come from the family's `module_groups` ("vit", "aligner", "llm"); the longest
matching name prefix decides a parameter's group, so the aligner inside the vision tower
is not counted as vision tower.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmkit.errors import VlmkitError
from vlmkit.models.loader import peft_quietly
from vlmkit.train.config import SFTConfig

ALL_LINEAR = ("all-linear", "all", "all_linear")


def group_of(name: str, module_groups: dict[str, tuple[str, ...]]) -> str | None:
    """'model.visual.merger.mlp.0.weight' -> 'aligner' (longest matching prefix), or None."""
    best, best_len = None, -1
    name = name.removeprefix("base_model.model.")  # names inside a peft wrapper
    for group, prefixes in module_groups.items():
        for prefix in prefixes:
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = group, len(prefix)
    return best


def frozen_groups(config: SFTConfig) -> set[str]:
    return {
        g
        for g, frozen in (
            ("vit", config.freeze_vit),
            ("aligner", config.freeze_aligner),
            ("llm", config.freeze_llm),
        )
        if frozen
    }


def lora_targets(
    model: torch.nn.Module, config: SFTConfig, module_groups: dict[str, tuple[str, ...]]
) -> list[str]:
    """Full names of the Linear layers LoRA wraps: those in unfrozen groups, matching --target-modules
    (`all-linear`, spelled `ALL` / `all` in ms-swift, or comma-separated name suffixes such as q_proj,v_proj).
    The output head is left out."""
    frozen = frozen_groups(config)
    wanted = (
        None
        if config.target_modules.strip().lower() in ALL_LINEAR
        else {t.strip() for t in config.target_modules.split(",")}
    )
    targets, suffixes = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        group = group_of(name + ".", module_groups)
        suffixes.add(name.rsplit(".", 1)[-1])
        if group is None or group in frozen or name.endswith("lm_head"):
            continue
        if wanted is None or name.rsplit(".", 1)[-1] in wanted:
            targets.append(name)
    if not targets:
        raise VlmkitError(
            f"--target-modules {config.target_modules}: matches no Linear layer in the trained parts; "
            f"layer names include: {', '.join(sorted(suffixes))}"
        )
    return targets


def apply_tuning(model: torch.nn.Module, config: SFTConfig, module_groups: dict[str, tuple[str, ...]]):
    """Freeze and (for LoRA) wrap `model`; returns the model to train."""
    frozen = frozen_groups(config)
    if config.tuner == "full":
        for name, param in model.named_parameters():
            param.requires_grad = group_of(name, module_groups) not in frozen
        return model
    from peft import get_peft_model

    lora = lora_config(model, config, module_groups)
    for param in model.parameters():
        param.requires_grad = False
    with peft_quietly():
        return get_peft_model(model, lora)


def lora_config(model: torch.nn.Module, config: SFTConfig, module_groups: dict[str, tuple[str, ...]]):
    """peft's `LoraConfig` of --lora-rank, --lora-alpha, --lora-dropout and the layers `lora_targets` names."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_targets(model, config, module_groups),
        bias="none",
    )


def parameter_groups(
    model: torch.nn.Module,
    config: SFTConfig,
    module_groups: dict[str, tuple[str, ...]],
    decay_names: set[str],
) -> list[dict[str, Any]]:
    """Optimizer groups: --vit-lr / --aligner-lr for those groups, --lr for the rest; no weight decay
    on the names the trainer excludes (biases, norms)."""
    lrs = {"vit": config.vit_lr or config.lr, "aligner": config.aligner_lr or config.lr}
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = lrs.get(group_of(name, module_groups), config.lr)
        groups.setdefault((lr, name in decay_names), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": config.weight_decay if decay else 0.0}
        for (lr, decay), params in groups.items()
    ]


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
