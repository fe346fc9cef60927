"""`vlmkit sft`'s options are the fields of the run's option groups (`vlmkit.train.options`): one declaration
each, the same in `vlmkit sft --help`, in `SFTConfig` (args.json, YAML keys, Python callers) and checked on the
config that the flags and `--config` make together."""

from __future__ import annotations

import dataclasses

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from vlmkit.errors import VlmkitError
from vlmkit.groups import field_default


def sft_options() -> dict[str, object]:
    from vlmkit.cli import app

    command = get_command(app).commands["sft"]
    return {p.name: p.default for p in command.params if p.param_type_name == "option" and p.name != "config"}


def test_every_run_setting_is_an_sft_option_with_the_same_default():
    from vlmkit.train.config import SFTConfig

    fields = {f.name: field_default(f) for f in dataclasses.fields(SFTConfig)}
    options = sft_options()
    assert set(fields) == set(options)
    # a list option's "not given" is None on the command line, [] in the config
    assert {name: default or None for name, default in fields.items() if isinstance(default, list)} == {
        name: options[name] for name, default in fields.items() if isinstance(default, list)
    }
    assert {n: d for n, d in fields.items() if not isinstance(d, list)} == {
        n: options[n] for n, d in fields.items() if not isinstance(d, list)
    }


@pytest.fixture
def trained(monkeypatch):
    """Runs `vlmkit sft ARGS` up to the training itself; returns the configs it would have trained."""
    import vlmkit.train.finetune as finetune

    configs = []
    monkeypatch.setattr(finetune, "sft", lambda config: configs.append(config) or "RUN")
    return configs


def test_flags_and_the_config_file_are_checked_together(tmp_path, trained):
    from vlmkit.cli import app

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("model: base\nfreeze-vit: false\nlr: 0.5\n")
    # --freeze-llm alone would leave nothing to train; with the file's freeze-vit: false it trains the vision tower
    result = CliRunner().invoke(app, ["sft", "--config", str(run_yaml), "-d", "a.jsonl", "b.jsonl", "--freeze-llm",
                                      "--lr", "0.002"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = trained
    assert (config.model, config.dataset, config.freeze_vit, config.freeze_llm) == ("base", ["a.jsonl", "b.jsonl"],
                                                                                      False, True)  # fmt: skip
    assert config.lr == 0.002  # a flag wins over the file
    run_yaml.write_text("model: base\nfreeze-llm: true\n")
    with pytest.raises(VlmkitError, match="--freeze-vit, --freeze-aligner and --freeze-llm together leave nothing"):
        CliRunner().invoke(app, ["sft", "--config", str(run_yaml), "-d", "a.jsonl"], catch_exceptions=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_length": 0}, "--max-length 0: must be positive"),  # DataOptions
        ({"quant": "4bit", "tuner": "full"}, r"--quant needs --tuner lora \(QLoRA\)"),  # TunerOptions
        ({"warmup_ratio": 1.0}, r"--warmup-ratio 1.0: must be in \[0, 1\)"),  # OptimOptions
        ({"save_best": True}, "--save-best keeps the best checkpoint by --eval-metric"),  # EvalOptions
        ({"report_to": "neptune"}, "--report-to neptune: choose one of auto, tensorboard"),  # TrackingOptions
        ({"deepspeed": "zero2", "fsdp": "full_shard"}, "--deepspeed and --fsdp cannot be combined"),  # EngineOptions
        ({"eval_metric": "cer"}, "--eval-metric scores validation rows: give --val-dataset"),  # across groups
    ],
)
def test_each_group_refuses_its_bad_values_in_one_line(options, message):
    from vlmkit.train.config import SFTConfig

    with pytest.raises(VlmkitError, match=message):
        SFTConfig(model="m", dataset=["d.jsonl"], **options).validate()
