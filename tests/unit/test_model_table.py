"""The README's model table and `vlmkit families` say the same about every model type (issue 22 #5): every curated
family with what it was verified against (`Family.verified`), and model types on the generic path with what was
tested or whether their processor can load without torchvision (`vlmkit.families.generic_checked`)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from vlmkit.cli import app
from vlmkit.families import FAMILIES
from vlmkit.families.generic import image_text_model_types
from vlmkit.families.generic_checked import TESTED, generic_status

README = Path(__file__).parents[2] / "README.md"
ROW = re.compile(r"^\| `([^`]+)` \| (curated: `([^`]+)`|generic) \| (.*) \|$")


def table_rows() -> list[re.Match]:
    return [m for line in README.read_text().splitlines() if (m := ROW.match(line))]


def test_the_readme_model_table_lists_every_family_and_generic_types_as_the_code_does():
    rows = table_rows()
    curated = {m[1]: (m[3], m[4]) for m in rows if m[2] != "generic"}
    assert curated == {f.model_type: (f.name, f.verified) for f in FAMILIES.values()}
    assert all(f.verified for f in FAMILIES.values())
    generic = {m[1]: m[4] for m in rows if m[2] == "generic"}
    assert len(generic) >= 8 and set(TESTED) <= set(generic)
    for model_type, status in generic.items():
        assert model_type in image_text_model_types() and model_type not in FAMILIES, model_type
        assert status == generic_status(model_type), model_type


def test_families_prints_what_each_family_and_generic_type_was_verified_with():
    out = CliRunner().invoke(app, ["families"], catch_exceptions=False).output
    for family in FAMILIES.values():
        assert f"  verified: {family.verified}\n" in out, family.name
    for model_type in TESTED:
        assert f"  {model_type}: {generic_status(model_type)}\n" in out
    needs = out.split("not tested, processor needs torchvision", 1)[1].splitlines()[0]
    assert "smolvlm" in needs and "mistral3" in needs and "idefics3" not in needs
