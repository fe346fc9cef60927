"""Family specifics stay in their folders: shared code (src/vlmkit outside src/vlmkit/families/) names no
family's tensors, names or numbers, and every registered family's template has the written interface.

The scan reads the code, not the prose: names, attributes, keyword arguments, imports and string or number
constants, leaving out comments and docstrings (which may cite a family as an example). See
docs/adding-a-family.md.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import vlmkit
from vlmkit.families import FAMILIES
from vlmkit.families.interface import Grounds, Packs, SplitsMedia, Template

SRC = Path(vlmkit.__file__).parent
FAMILIES_DIR = SRC / "families"

# Model inputs and model internals of the Qwen-VL families (transformers' names).
QWEN_TENSORS = (
    "image_grid_thw",
    "video_grid_thw",
    "mm_token_type_ids",
    "rope_deltas",
    "get_rope_index",
    "second_per_grid_ts",
    "pixel_values_videos",
    "mrope_section",
)
# The families' own numbers: the real checkpoints' special token ids and Qwen's default pixel limits.
FAMILY_NUMBERS = {
    *(f.first_special_id + k for f in FAMILIES.values() for k in range(len(f.special_tokens))),
    12845056,  # Qwen2-VL's max_pixels
    3136,  # Qwen2-VL's min_pixels
    28 * 28,  # a Qwen-VL merged patch
}
FAMILY_NAMES = {
    name.lower()
    for f in FAMILIES.values()
    for name in (f.name, f.model_type, f.folder.name, *f.aliases)
}
FAMILY_MODULES = {f"vlmkit.families.{f.folder.name}" for f in FAMILIES.values()}

# Exceptions kept, each with its reason: (file relative to src/vlmkit, the text found).
ALLOWED = {
    # The demo builds a tiny model of one family on purpose: its walk-through and recorded figures
    # (README, benchmarks) are for that family. It asks the registry by name, it branches on nothing.
    ("commands/demo_run.py", "qwen2-vl"),
    # TRL's KTOTrainer reads the KL conversations' per-token type ids under these names only; kto_data refuses
    # a model with any other per-token input rather than let TRL pair it with the wrong conversations.
    ("train/kto_data.py", "mm_token_type_ids"),
}

# The per-row image resolution limit has the template interface's neutral names in shared code (`limit`,
# `fit_limit`, `min_limit`, `max_limit`: pixels for Qwen, tiles for InternVL). Qwen's pixel names appear
# only as the names users give the options, in these files (each with its reason):
PIXEL_LIMIT_NAMES = {"min_pixels", "max_pixels", "fit_max_pixels"}
OPTION_NAME_FILES = {
    "settings.py": "EncodingSettings' fields: the options as users name them",
    "train/config.py": "SFTConfig's encoding fields (the sft options)",
    "backends/vllm_args.py": "the options passed on to vLLM's processor under their own names",
    "sample/__init__.py": "a dataset row's per-image min_pixels / max_pixels keys (qwen-vl-utils' format), refused by name",
    "commands/demo_run.py": "calls the Python API with the user-facing keyword arguments",
    "commands/demo_rl.py": "calls the Python API with the user-facing keyword arguments",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of the module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _findings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every family tensor name, family name, family module or family number in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        texts: list[str] = []
        if isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, ast.keyword) and node.arg:
            texts = [node.arg]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if any(node.module == m or node.module.startswith(m + ".") for m in FAMILY_MODULES):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith(tuple(FAMILY_MODULES))]
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            if isinstance(node.value, str):
                if node.value.lower() in FAMILY_NAMES:
                    found.append((node.lineno, node.value.lower()))
                texts = [node.value]
            elif isinstance(node.value, int) and not isinstance(node.value, bool) and node.value in FAMILY_NUMBERS:
                found.append((node.lineno, str(node.value)))
        found += [(node.lineno, name) for text in texts for name in QWEN_TENSORS if name in text]
    return found


def _pixel_limit_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every use of a pixel name for the resolution limit in `path`'s code (names,
    attributes, parameters, keyword arguments, definitions, string constants; not prose)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, (ast.keyword, ast.arg)):
            name = node.arg
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            name = node.value
        if name in PIXEL_LIMIT_NAMES:
            found.append((node.lineno, name))
    return found


def test_shared_code_names_no_family_tensor_name_or_number():
    shared = [p for p in sorted(SRC.rglob("*.py")) if FAMILIES_DIR not in p.parents]
    assert len(shared) > 30  # the scan sees the package
    problems = [
        f"{path.relative_to(SRC)}:{line}: {text}"
        for path in shared
        for line, text in _findings(path)
        if (str(path.relative_to(SRC)), text) not in ALLOWED
    ]
    assert not problems, "family specifics outside src/vlmkit/families/:\n" + "\n".join(problems)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scan is not blind: a shared module that reaches into a family is caught, prose is not."""
    module = tmp_path / "bad.py"
    module.write_text(
        '"""Docstrings may mention image_grid_thw and qwen2-vl."""\n'
        "from vlmkit.families.qwen2_vl.template import smart_resize  # a family module\n"
        "# comments may say mm_token_type_ids\n"
        "def f(batch, family):\n"
        '    """Nor here: get_rope_index."""\n'
        '    batch.pop("mm_token_type_ids")\n'
        '    if family.name == "qwen2-vl":\n'
        "        return batch[\"image_grid_thw\"], model.rope_deltas, 151655\n"
    )
    found = {text for _, text in _findings(module)}
    assert found == {
        "vlmkit.families.qwen2_vl.template",
        "mm_token_type_ids",
        "qwen2-vl",
        "image_grid_thw",
        "rope_deltas",
        "151655",
    }


def test_shared_code_calls_the_resolution_limit_by_its_interface_names():
    """Shared code asks templates for `limit` / `fit_limit` / `min_limit` / `max_limit`, never for Qwen's
    pixel names (which are tile counts for InternVL); the option plumbing keeps the users' names. A new
    file of option plumbing goes in OPTION_NAME_FILES with its reason."""
    shared = [p for p in sorted(SRC.rglob("*.py")) if FAMILIES_DIR not in p.parents]
    problems = [
        f"{path.relative_to(SRC)}:{line}: {name}"
        for path in shared
        if path.relative_to(SRC).as_posix() not in OPTION_NAME_FILES
        for line, name in _pixel_limit_names(path)
    ]
    assert not problems, "pixel names for the template's resolution limit in shared code:\n" + "\n".join(problems)


def test_the_limit_scan_finds_what_it_looks_for(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(
        '"""Docstrings may say max_pixels."""\n'
        "def f(template, sample, max_pixels):  # comments may say min_pixels\n"
        "    fitted = template.fit_max_pixels(sample, 10)\n"
        "    template.encode(sample, max_pixels=fitted)\n"
        '    return template.min_pixels, {"max_pixels": 1}, template.max_limit\n'
    )
    assert sorted(_pixel_limit_names(module)) == [
        (2, "max_pixels"), (3, "fit_max_pixels"), (4, "max_pixels"), (5, "max_pixels"), (5, "min_pixels"),
    ]  # fmt: skip


def test_allowed_exceptions_are_still_needed():
    """An allow-list entry whose finding is gone is removed, so the list stays the true exceptions."""
    for file, text in ALLOWED:
        assert text in {t for _, t in _findings(SRC / file)}, (file, text)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_every_template_has_the_written_interface(family, tmp_path, request):
    """Each registered family's template is a `Template`; its declared capabilities match its record."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model, build_tokenizer
    from vlmkit.models import loader

    if family.remote_code:  # no tiny model; its template needs only a tokenizer with the chat tokens
        folder, tokenizer = tmp_path, build_tokenizer(family_by_name("qwen2-vl"), small_vocab=True)
    elif family.write_tiny_model is not None:  # a tiny model in the original layout, converted (conftest's)
        folder = request.getfixturevalue("qwen_vl_models")["native"]
        tokenizer = loader.load_tokenizer(loader.resolve_model(str(folder)))
    else:
        folder = build_tiny_model(family, tmp_path / "m", small_vocab=True)
        tokenizer = build_tokenizer(family, small_vocab=True)
    template = family.load_template(folder, tokenizer)
    assert isinstance(template, Template)
    for method in (template.encode, template.count_tokens, *([template.image_sizes] if template.box_format else [])):
        assert "limit" in inspect.signature(method).parameters, method  # the interface's name for the limit
    bounds = (template.min_limit, template.max_limit)
    assert bounds == (None, None) if template.limit_option is None else bounds[0] <= bounds[1]
    assert isinstance(template, SplitsMedia) == family.chat_cache
    assert isinstance(template, Packs) == family.packing
    assert (template.box_format is None) == (family.box_format is None)
    assert isinstance(template, Grounds) or template.box_format is None
    assert (template.video_sampling is not None) == ("video" in family.supports)


def test_every_template_pads_its_tokens_through_the_one_collate_core():
    """`vlmkit.families.encoding.collate_tokens` is the padding core of every `collate`; no family pads input_ids,
    attention masks or labels on its own (the Qwen-VL native template did, a copy of the core)."""
    copies = [
        str(path.relative_to(SRC))
        for path in FAMILIES_DIR.rglob("*.py")
        if "pad_sequences(" in path.read_text() and path.name != "encoding.py"  # the core itself
    ]
    assert copies == []
    calls = [path.name for path in FAMILIES_DIR.rglob("template.py") if "collate_tokens(" in path.read_text()]
    assert len(calls) >= 4, calls  # qwen2_vl, internvl, llava, qwen_vl (and native_template.py below)
    assert "collate_tokens(" in (FAMILIES_DIR / "qwen_vl" / "native_template.py").read_text()


def _annotation_is_any(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Name) and node.id == "Any" or isinstance(node, ast.Constant) and node.value == "Any"


def _untyped_templates(path: Path, root: Path = SRC) -> list[str]:
    """Where `path` types a template as `Any`: a parameter or field named `template`, or a function whose name
    ends in `template` returning `Any`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [f"{node.name}({a.arg})" for a in args if a.arg == "template" and _annotation_is_any(a.annotation)]
            if node.name.endswith("template") and _annotation_is_any(node.returns):
                found.append(f"{node.name}() -> Any")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "template":
            found += ["template: Any"] if _annotation_is_any(node.annotation) else []
    return [f"{path.relative_to(root)}:{where}" for where in found]


def test_code_types_templates_with_the_interface():
    """A template passed around or returned is typed `Template` (`vlmkit.families.interface`, a
    TYPE_CHECKING import) or the family's own class, never `Any`: the Protocol is what the code says."""
    assert [hit for path in sorted(SRC.rglob("*.py")) for hit in _untyped_templates(path)] == []


def test_the_template_type_scan_finds_what_it_looks_for(tmp_path):
    path = tmp_path / "example.py"
    path.write_text(
        "class A:\n    template: Any\n"
        "def f(template: Any, other: Any): ...\n"
        "def load_template(x) -> Any: ...\n"
        "def g(template: Template) -> Template: ...\n"
    )
    assert sorted(_untyped_templates(path, root=tmp_path)) == [
        "example.py:f(template)",
        "example.py:load_template() -> Any",
        "example.py:template: Any",
    ]


def test_template_classes_have_distinct_names():
    """Two families' template classes never share a name (Qwen2VLTemplate for Qwen2-VL..Qwen3-VL,
    NativeQwenVLTemplate for the first-generation Qwen-VL), so a name says which one is meant."""
    names = [
        node.name
        for path in sorted(FAMILIES_DIR.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Template")
    ]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in FAMILIES_DIR.glob("*/__init__.py")))
def test_every_family_record_is_written_as_one_family_call(folder):
    """Each `FAMILY` (and `*_FAMILY`) of a folder is a `Family(...)` call listing its fields, never derived from
    another record (`dataclasses.replace(OTHER, ...)`): docs/adding-a-family.md, section 2."""
    tree = ast.parse((FAMILIES_DIR / folder / "__init__.py").read_text())
    records = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and (t.id == "FAMILY" or t.id.endswith("_FAMILY")) for t in node.targets)
    ]
    assert records, f"{folder}/__init__.py has no FAMILY"
    for value in records:
        assert isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Family", (
            f"{folder}/__init__.py: {ast.unparse(value)[:60]}"
        )
