"""`SFTConfig`: every setting of a fine-tuning run, flat, with the CLI's defaults.

The CLI, a YAML file (`--config run.yaml`, keys spelled as the flags: `lora-rank` or
`lora_rank`) and Python callers all fill this one dataclass; flags given on the command
line override the file. The resolved config is saved as `args.json` in the run folder.
Its fields are not written here: they are those of the option groups of a run
(`vlmkit.train.options`) and `vlmkit.settings.EncodingSettings`, added by `with_group_fields`,
so each option is declared once, with its default and help, on its group.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vlmkit.errors import VlmkitError
from vlmkit.settings import ENCODING_FIELDS, EncodingSettings
from vlmkit.train.options import SFT_GROUPS, DataOptions, refuse

# the groups whose fields are SFTConfig's, in this order (the encoding options follow the data's, as in --help)
CONFIG_GROUPS = (DataOptions, EncodingSettings, *SFT_GROUPS[1:])
Group = TypeVar("Group")


def with_group_fields(*groups: type) -> typing.Callable[[type], type]:
    """Give a class one field per field of `groups` (same name, type, default and help) before `@dataclass`
    reads it: an option added to a group is a run setting too (YAML key, args.json, `SFTConfig(lr=...)`)."""

    def add(cls: type) -> type:
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for group in groups:
            hints = typing.get_type_hints(group)
            for f in dataclasses.fields(group):
                annotations[f.name] = hints[f.name]
                setattr(cls, f.name, dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                       metadata=f.metadata))  # fmt: skip
        # assigned, not updated in place: on Python 3.14 a class's annotations may be computed afresh from its body
        cls.__annotations__ = annotations
        return cls

    return add


@dataclass
@with_group_fields(*CONFIG_GROUPS)
class SFTConfig:
    def group(self, cls: type[Group]) -> Group:
        """This run's values of group `cls` (e.g. `config.group(OptimOptions).lr`)."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})  # type: ignore[call-arg]

    def validate(self) -> SFTConfig:
        """Raise a one-line `VlmkitError` naming the option for any value out of range: each group's own
        checks, then those that read several groups."""
        for cls in CONFIG_GROUPS:
            if hasattr(cls, "check"):
                self.group(cls).check()
        refuse([
            (
                self.eval_steps > 0 and self.save_steps > 0 and self.logging_steps > 0,
                "--eval-steps, --save-steps and --logging-steps must be positive",
            ),
        ])  # fmt: skip
        if self.streaming:  # rows are read as training goes: nothing that needs them all up front
            if self.max_steps <= 0:
                raise VlmkitError("--streaming needs --max-steps: a stream has no length to count epochs in")
            for given, option in ((self.val_dataset or self.split_ratio, "--val-dataset/--split-ratio"),
                                  (self.group_by_length, "--group-by-length")):  # fmt: skip
                if given:
                    raise VlmkitError(f"{option} needs every row up front; drop it with --streaming")
        if self.eval_metric and not (self.val_dataset or self.split_ratio):
            raise VlmkitError("--eval-metric scores validation rows: give --val-dataset or --split-ratio")
        if self.save_best:
            if self.save_steps % self.eval_steps:
                raise VlmkitError(
                    f"--save-best: --save-steps {self.save_steps} must be a multiple of --eval-steps "
                    f"{self.eval_steps} (a checkpoint is kept only where it was scored)"
                )
            if self.save_total_limit is not None and self.save_total_limit < 2:
                raise VlmkitError("--save-best needs --save-total-limit 2 or more (the best and the last checkpoint)")
        return self

    @property
    def encoding(self) -> EncodingSettings:
        """The encoding fields as one `EncodingSettings` (flat here: YAML keys, args.json and the keyword
        arguments of `SFTConfig(...)` name them one by one)."""
        return self.group(EncodingSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(SFTConfig)}
assert set(ENCODING_FIELDS) <= set(FIELDS), "SFTConfig needs a field for every EncodingSettings field"


def read_yaml_config(path: str | Path, config_class: type = SFTConfig) -> dict[str, Any]:
    """Options from a YAML file; keys as the flags (`lora-rank`) or as fields (`lora_rank`) of `config_class`
    (`vlmkit grpo`'s GRPOConfig has more)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise VlmkitError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise VlmkitError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise VlmkitError(f"--config {path}: expected a mapping of option names to values")
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in {f.name for f in dataclasses.fields(config_class)}:
            raise VlmkitError(f"--config {path}: unknown option {key!r}; see `vlmkit sft --help`")
        if name in ("dataset", "val_dataset") and isinstance(value, str):
            value = [value]
        options[name] = value
    return options

