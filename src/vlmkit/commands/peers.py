"""Flags that people coming from ms-swift and LLaMA-Factory type, and what vlmkit calls them.

click's own answer to an unknown option is a guess by spelling (`--sft_type` -> "Possible options:
--dtype"), which sends an ms-swift user the wrong way. `peer_option_hint` answers instead with one line
that names the peer and the vlmkit flag that does the job, with the value the user gave
("--sft_type is ms-swift's; vlmkit: --tuner lora"); the CLI uses it for every command's unknown option
(`PeerAwareGroup`, below). The environment variables ms-swift reads are in `peer_env.py`.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

try:
    from typer._click.exceptions import NoSuchOption  # newer typer carries its own copy of click
except ImportError:
    from click.exceptions import NoSuchOption

from vlmkit.errors import VlmkitError

# peer flag -> (whose it is, what to write in vlmkit); "{value}" is the value the user gave after the flag
PEER_FLAGS: dict[str, tuple[str, str]] = {
    "--sft_type": ("ms-swift", "--tuner {value}"),
    "--train_type": ("ms-swift", "--tuner {value}"),
    "--model_type": (
        "ms-swift",
        "leave it out: the family is read from the checkpoint's config.json; give --model ORG/NAME or a folder",
    ),
    "--model_id_or_path": ("ms-swift", "--model {value}"),
    "--model_name_or_path": ("LLaMA-Factory", "--model {value}"),
    "--num_train_epochs": ("ms-swift", "--epochs {value}"),
    "--learning_rate": ("ms-swift", "--lr {value}"),
    "--per_device_train_batch_size": ("ms-swift", "--batch-size {value}"),
    "--gradient_accumulation_steps": ("ms-swift", "--grad-accum {value}"),
    "--lora_target_modules": ("ms-swift", "--target-modules {value}"),
    "--lora_target": ("LLaMA-Factory", "--target-modules {value}"),
    "--ckpt_dir": ("ms-swift", "--ckpt {value}"),
    "--stage": ("LLaMA-Factory", "`vlmkit sft` is the sft stage; leave --stage out"),
    "--finetuning_type": ("LLaMA-Factory", "--tuner {value}"),
    "--template": (
        "LLaMA-Factory", "leave it out: the chat template comes from the checkpoint (its family's template)"
    ),
    "--cutoff_len": ("LLaMA-Factory", "--max-length {value}"),
}

# ms-swift's booleans take a value (`--freeze_vit true`); vlmkit's are flags with a --no- form
BOOLEAN_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def peer_option_hint(option: str, value: str | None, known: set[str]) -> str | None:
    """The one line for an unknown `option` (as typed, without `=value`), given the `value` that followed
    it (or None) and the `known` options of the command; None when it is nobody's flag we know."""
    if option in PEER_FLAGS:
        whose, instead = PEER_FLAGS[option]
        return f"{option} is {whose}'s; vlmkit: {instead.format(value=value or 'VALUE')}"
    dashed = option.replace("_", "-")
    if dashed != option and dashed in known:
        return f"{option}: vlmkit spells it {_with_value(dashed, value, known)}"
    return None


def _with_value(flag: str, value: str | None, known: set[str]) -> str:
    """`--freeze-vit` with ms-swift's `true`/`false` -> `--freeze-vit` / `--no-freeze-vit`; else
    `FLAG VALUE`."""
    on = BOOLEAN_VALUES.get((value or "").lower())
    if on is not None and f"--no-{flag[2:]}" in known:
        return flag if on else f"--no-{flag[2:]}"
    return f"{flag} {value}" if value is not None and not value.startswith("-") else flag


def target_modules_warning(target_modules: str) -> str | None:
    """A warning line when --target-modules is given in ms-swift's spelling `ALL`, whose meaning differs."""
    if target_modules.strip() not in ("ALL", "all"):
        return None
    return (
        f"warning: --target-modules {target_modules.strip()}: in vlmkit this is every Linear layer of the parts "
        "that train (the language model unless --no-freeze-vit / --no-freeze-aligner); ms-swift's ALL also "
        "wraps the vision tower's layers: add --no-freeze-vit to train those too"
    )


class PeerAwareGroup(TyperGroup):
    """The app's command group: an unknown option that is another tool's spelling (ms-swift's --sft_type,
    LLaMA-Factory's --cutoff_len, `--a_b` for `--a-b`) gets one `error:` line naming vlmkit's flag instead of
    click's guess by spelling (`vlmkit.commands.peers`). Every command, nested ones too, is parsed inside
    this group's `invoke`."""

    def invoke(self, ctx: typer.Context):
        args = [*ctx._protected_args, *ctx.args]  # the command line after the group's own options
        try:
            return super().invoke(ctx)
        except NoSuchOption as e:
            hint = peer_option_hint(e.option_name, _value_after(e.option_name, args), _known_options(e.ctx))
            if hint is None:
                raise
            raise VlmkitError(hint) from None


def _value_after(option: str, args: list[str]) -> str | None:
    """The value given to `option` in `args` (`--opt value` or `--opt=value`), or None."""
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            return arg.partition("=")[2]
        if arg == option:
            following = args[i + 1] if i + 1 < len(args) else None
            return None if following is None or following.startswith("--") else following
    return None


def _known_options(ctx: typer.Context | None) -> set[str]:
    command = ctx.command if ctx is not None else None
    return {flag for param in getattr(command, "params", ()) for flag in (*param.opts, *param.secondary_opts)}
