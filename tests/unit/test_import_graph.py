"""vlmkit's import graph has no circles and no module reaches into another package's private names.

The graph is read from the source with `ast`, not by importing it: an edge A -> B for every
`import B` / `from B import x` in A, at module level or inside a function (a deferred import is still a
dependency; deferring one only hides a circle), leaving out the imports under `if TYPE_CHECKING:`, which
never run. `from P import name` is an edge to the module `P.name` when that is a module, else to `P`.
Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`; those implicit edges to parent
packages are not counted (every module of a package would otherwise depend on the package's registry).

Everything is found from the files under src/vlmkit, so new modules and packages are checked as they come.
`python tests/unit/test_import_graph.py` prints the figures (modules, import edges, circles, private
imports across packages).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
ROOT_PACKAGE = "vlmkit"
# The benchmark scripts import each other by file name (`from serve_process import ...`): their folder is
# a root of its own.
BENCHMARKS = REPO / "benchmarks"


@dataclass(frozen=True)
class Import:
    """One import statement's target in `importer`: `module` (a vlmkit module) and the `name` taken from
    it (None for `import module` or when `name` is itself a module)."""

    importer: str
    module: str
    name: str | None
    line: int


def module_name(path: Path, src: Path = SRC) -> str:
    """src/vlmkit/families/qwen2_vl/template.py -> "vlmkit.families.qwen2_vl.template"; a package's
    `__init__.py` is the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(src: Path = SRC, root: str = ROOT_PACKAGE) -> dict[str, Path]:
    """Every module of the `root` package under `src`: dotted name -> file."""
    return {module_name(path, src): path for path in sorted((src / root).rglob("*.py"))}


def is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def package_of(module: str, modules: dict[str, Path]) -> str:
    """The package a module belongs to: itself for a package's `__init__.py`, else its parent."""
    return module if is_package(module, modules) else module.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, at any depth, except in the body of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    """The module a `from ... import` names, with relative imports (`from .x import y`) resolved."""
    if not node.level:
        return node.module or ""
    base = package_of(importer, modules).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, modules: dict[str, Path]) -> list[Import]:
    """The vlmkit imports of `module` (others, like torch's, are left out)."""
    tree = ast.parse(modules[module].read_text(), filename=str(modules[module]))
    found: list[Import] = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, None, node.lineno) for alias in node.names if alias.name in modules]
            continue
        source = _absolute(node, module, modules)
        if source not in modules:
            continue
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in modules:
                found.append(Import(module, submodule, None, node.lineno))
            else:
                found.append(Import(module, source, alias.name, node.lineno))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the vlmkit modules it imports (itself left out)."""
    return {m: {i.module for i in imports_of(m, modules) if i.module != m} for m in modules}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other through some chain (Tarjan's algorithm, iterative);
    a group of one is returned only when the module imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    groups.append(sorted(group))
    return groups


def shortest_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest circle through the first module of `group` (breadth first), as [a, b, ..., a]."""
    start, members = group[0], set(group)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return [start]


def private_imports_across_packages(modules: dict[str, Path]) -> list[Import]:
    """`from X import _name` where `_name` is private (one leading underscore, not a dunder) and X is in
    another package than the importer (a module imported as `_name` counts too)."""
    found = []
    for module in modules:
        for imp in imports_of(module, modules):
            name = imp.name if imp.name is not None else imp.module.rpartition(".")[2]
            private = name.startswith("_") and not name.startswith("__")
            if private and package_of(imp.module, modules) != package_of(module, modules):
                found.append(imp)
    return found


def circles(modules: dict[str, Path]) -> list[str]:
    """Per group of modules that import each other, one shortest circle ("a -> b -> a") and, when the group
    is larger than that circle, all its modules."""
    graph = import_graph(modules)
    found = []
    for group in strongly_connected(graph):
        cycle = shortest_cycle(graph, group)
        rest = f" (one of the circles among {', '.join(group)})" if len(group) > len(cycle) - 1 else ""
        found.append(" -> ".join(cycle) + rest)
    return found


def describe(imp: Import, modules: dict[str, Path]) -> str:
    path = modules[imp.importer].relative_to(REPO)
    what = f"{imp.module}.{imp.name}" if imp.name else imp.module
    return f"{path}:{imp.line}: {imp.importer} imports {what}"


def test_no_import_circles():
    found = circles(find_modules())
    assert not found, "modules that import each other (through function-level imports too):\n" + "\n".join(found)


def test_no_import_circles_among_the_benchmark_scripts():
    found = circles(find_modules(BENCHMARKS, "."))
    assert not found, "benchmark scripts that import each other:\n" + "\n".join(found)


def test_no_private_names_imported_across_packages():
    modules = find_modules()
    found = [describe(imp, modules) for imp in private_imports_across_packages(modules)]
    assert not found, "private names imported from another package (make them public or move them):\n" + (
        "\n".join(found)
    )


# The layers of src/vlmkit, bottom up: a module imports only from its own layer or those below. The layout
# says where a thing goes: a new medium in media/, a new backend in backends/, a new command in commands/.
LAYERS = (
    # the core values; the package itself (`vlmkit/__init__.py`: __version__ and the core's names; its `load`
    # defers to the backend) is imported by anything
    ("vlmkit", "vlmkit.errors", "vlmkit.groups", "vlmkit.settings", "vlmkit.sample"),
    ("vlmkit.media",),  # images, video, boxes, drawing, synthetic shapes
    ("vlmkit.families",),  # one folder per family, the template interface, tiny models from their recipes
    ("vlmkit.models",),  # model folders in and out: load, place, quantize, export
    ("vlmkit.backends",),  # engines that generate: transformers, vLLM
    ("vlmkit.data", "vlmkit.infer", "vlmkit.eval", "vlmkit.train", "vlmkit.serve"),  # features
    ("vlmkit.ui",),  # the page of `vlmkit app`: a client of the features
    ("vlmkit.commands", "vlmkit.cli", "vlmkit.__main__"),  # the CLI
)


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names `module` or its package (the bare root package
    `vlmkit` names only itself)."""
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != ROOT_PACKAGE and module.startswith(prefix + "."))
    ]
    assert matches, f"{module} is in no layer: add its package to LAYERS"
    return max(matches)[1]


def imports_up(modules: dict[str, Path]) -> list[str]:
    """Every import from a lower layer up into a higher one (the package's own `vlmkit/__init__.py`, the
    public API, may import anything)."""
    return [
        f"{imp.importer}:{imp.line} imports {imp.module} (layer {layer_of(imp.module)} over {layer_of(imp.importer)})"
        for module in modules
        if module != ROOT_PACKAGE
        for imp in imports_of(module, modules)
        if layer_of(imp.module) > layer_of(imp.importer)
    ]


def test_every_module_sits_in_a_layer_and_imports_nothing_above_it():
    """No import runs back up: the core, media, families, models and backends never import a feature
    package (data, infer, eval, train, serve) or a command; features never import a command. Among the
    features imports go any way that makes no circle (eval answers through infer; train scores through eval)."""
    modules = find_modules()
    assert not imports_up(modules), "imports that run back up a layer:\n  " + "\n  ".join(imports_up(modules))


def test_the_graph_reader_sees_deferred_imports_and_skips_type_checking_ones(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import c\nelse:\n    import pkg.a\n"
    )
    (package / "sub" / "__init__.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("from pkg.b import _hidden\nfrom ..a import f\n")
    modules = find_modules(tmp_path, "pkg")
    graph = import_graph(modules)

    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.a"},
        "pkg.sub": {"pkg.sub.c"},
        "pkg.sub.c": {"pkg.a", "pkg.b"},
    }
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]
    assert shortest_cycle(graph, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]
    assert [(i.importer, i.name) for i in private_imports_across_packages(modules)] == [("pkg.sub.c", "_hidden")]


def report(title: str, modules: dict[str, Path]) -> None:
    graph = import_graph(modules)
    groups = strongly_connected(graph)
    private = private_imports_across_packages(modules)
    print(f"{title}\nmodules: {len(modules)}")
    print(f"import edges between them: {sum(len(targets) for targets in graph.values())}")
    print(f"circles (groups of modules importing each other): {len(groups)}, "
          f"{sum(len(g) for g in groups)} modules in them")
    for group in groups:
        print(f"  {len(group)} modules, e.g. {' -> '.join(shortest_cycle(graph, group))}")
    print(f"private names imported across packages: {len(private)}")
    for imp in private:
        print(f"  {describe(imp, modules)}")


def main() -> None:
    report("src/vlmkit", find_modules())
    report("\nbenchmarks/", find_modules(BENCHMARKS, "."))


if __name__ == "__main__":
    main()
