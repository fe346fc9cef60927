"""Encoding settings: one type, one check against the family, given > saved (vlmkit.json) > checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmkit.errors import VlmkitError
from vlmkit.families import family_by_name
from vlmkit.settings import (
    ENCODING_FIELDS,
    EncodingSettings,
    check_encoding,
    encoding_settings,
    resolve_encoding,
)

REFUSAL = (
    "--max-tiles does not apply to qwen2-vl models (its encoding options: --min-pixels --max-pixels --fps "
    "--nframes --max-frames --min-frames --video-max-pixels --system); leave it out"
)


def linked_copy(model: Path, folder: Path) -> Path:
    """`model`'s files linked into a new folder, so a test can give it its own vlmkit.json."""
    folder.mkdir()
    for file in model.iterdir():
        if file.name != "vlmkit.json":
            (folder / file.name).symlink_to(file)
    return folder


def template(folder: Path, encoding: EncodingSettings | None = None):
    from vlmkit.models.loader import load_tokenizer_and_template, resolve_model

    return load_tokenizer_and_template(resolve_model(folder), encoding)[1]


def test_given_beats_saved_beats_checkpoint_default(small_model, tmp_path):
    folder = linked_copy(small_model, tmp_path / "m")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    default = template(folder)
    assert default.max_pixels == (config.get("size") or {}).get("longest_edge", config.get("max_pixels"))
    assert default.system is None
    (folder / "vlmkit.json").write_text(json.dumps({"max_pixels": 5000, "system": "Saved.", "fps": 1.0}))
    saved = template(folder)
    assert (saved.max_pixels, saved.system, saved.fps) == (5000, "Saved.", 1.0)
    given = template(folder, EncodingSettings(max_pixels=7000, nframes=4))
    # given wins field by field; what is not given stays as saved (nframes replaces the saved fps)
    assert (given.max_pixels, given.system, given.fps, given.nframes) == (7000, "Saved.", None, 4)


def test_an_upper_limit_given_below_the_saved_lower_one_lowers_it(small_model, tmp_path):
    folder = linked_copy(small_model, tmp_path / "m")
    (folder / "vlmkit.json").write_text(json.dumps({"min_pixels": 8000, "max_pixels": 20_000}))
    lowered = template(folder, EncodingSettings(max_pixels=5000))
    assert (lowered.min_pixels, lowered.max_pixels) == (5000, 5000)
    assert template(folder, EncodingSettings(max_pixels=10_000)).min_pixels == 8000  # above it: kept


def test_one_merge_for_every_family():
    """`resolve_encoding` is the only place saved settings meet given ones; a family's template gets the
    result. Saved settings of another family (an old or hand-written vlmkit.json) are ignored."""
    internvl = family_by_name("internvl")
    saved = {"min_tiles": 4, "max_tiles": 12, "fps": None, "nframes": 8, "system": "S", "min_pixels": 5}
    assert resolve_encoding(internvl, EncodingSettings(), saved) == {
        "min_tiles": 4, "max_tiles": 12, "nframes": 8, "system": "S"
    }
    given = EncodingSettings(max_tiles=2, fps=1.0)
    assert resolve_encoding(internvl, given, saved) == {"min_tiles": 2, "max_tiles": 2, "fps": 1.0, "system": "S"}
    with pytest.raises(VlmkitError, match="--max-pixels does not apply to internvl"):
        resolve_encoding(internvl, EncodingSettings(max_pixels=5), saved)


def test_python_keywords_convert_to_the_one_type():
    assert encoding_settings(EncodingSettings(fps=1.0), max_pixels=5000) == EncodingSettings(fps=1.0, max_pixels=5000)
    assert EncodingSettings(max_tiles=2).given() == {"max_tiles": 2}
    with pytest.raises(TypeError, match="unknown encoding setting"):
        encoding_settings(max_pixel=5000)


def test_every_family_refuses_in_the_same_words():
    assert check_encoding(family_by_name("internvl"), EncodingSettings(max_tiles=3)) == {"max_tiles": 3}
    with pytest.raises(VlmkitError) as refused:
        check_encoding(family_by_name("qwen2-vl"), EncodingSettings(max_tiles=2))
    assert str(refused.value) == REFUSAL
    with pytest.raises(VlmkitError, match=r"^--fps does not apply to llava models \(its encoding options: --system\)"):
        check_encoding(family_by_name("llava"), EncodingSettings(fps=2.0))


def test_two_commands_refuse_an_option_the_family_does_not_take_alike(small_model, tmp_path):
    from vlmkit.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}) + "\n")
    runner = CliRunner()
    for args in (
        ["data", "check", "--model", str(small_model), "--dataset", str(data), "--max-tiles", "2"],
        ["infer", "--model", str(small_model), "--max-tiles", "2"],
    ):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, VlmkitError), result.output
        assert str(result.exception) == REFUSAL


def test_every_command_takes_every_encoding_option():
    from vlmkit.cli import app

    runner = CliRunner()
    for command in (["infer"], ["serve"], ["sft"], ["eval"], ["data", "check"], ["data", "preview"], ["data", "encode"]):
        shown = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).output
        for name in ENCODING_FIELDS:
            # the whole name: --pan-and-scan is not --pan-and-scan-min-crop-size
            declared = re.findall(rf"^  --{name.replace('_', '-')}(?![\w-])", shown, flags=re.MULTILINE)
            assert len(declared) == 1, (command, name)
