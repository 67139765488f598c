"""The package's architecture, read from its import graph (issue 20, "What it must show" 1; the layers of
CONTRIBUTING.md).

Every module under ``regpose/`` is parsed with ``ast`` (nothing is imported); relative imports are resolved, and
imports inside functions count like those at module top. Three rules:

* no import cycle between files;
* the layer order: a module imports only from its own layer or lower ones (``LAYERS``) - so data, codecs,
  evaluation and ops never import models / inference / engine / cli / compat, and models never import
  inference / engine / cli / compat;
* a package import sits at module top unless the line states why: an import of a regpose module inside a
  function carries ``# lazy: <reason>`` on its line (e.g. ``# lazy: CLI start-up time``), never to dodge a cycle.

Imports by name through ``importlib`` (the public facade in ``regpose/__init__.py``, the method table in
``models/registry.py``) are not part of the graph: they exist so that importing the package stays light.

Today's code breaks some rules; ``KNOWN_VIOLATIONS`` lists each break with the issue-20 item whose work removes
it. The list may only shrink: a break not in it fails, and so does an entry that no longer exists (remove it).
"""
from __future__ import annotations

import ast
import functools
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Layers of ARCH.md / CONTRIBUTING.md, lowest first; a module belongs to the longest prefix that names it.
LAYERS = (
    ("base", ("regpose", "regpose.errors", "regpose.typed", "regpose.structures", "regpose.jsonio",
              "regpose.paths")),
    ("data, codecs, evaluation, ops", ("regpose.data", "regpose.codecs", "regpose.evaluation", "regpose.ops")),
    ("models", ("regpose.models",)),
    ("assembly (config, checkpoint)", ("regpose.config", "regpose.checkpoint")),
    ("inference", ("regpose.inference",)),
    ("engine", ("regpose.engine",)),
    ("surface (cli, compat, demo)", ("regpose.cli", "regpose.compat", "regpose.demo", "regpose.__main__")),
)

LAZY_REASON = re.compile(r"#\s*lazy:\s*\S.{3,}")     # "# lazy: <why>" on an in-function import's line(s)

# Breaks of today's code, each with the issue-20 item whose work removes it. Only ever remove entries. A module
# named here also covers the package it may become: "regpose.models.dekr" (upward imports) and "regpose/models/dekr"
# (in-function imports: a path without .py) cover regpose/models/dekr.py and, after the split, regpose/models/dekr/.
KNOWN_VIOLATIONS = {
    # Import cycles (the set of files on the cycle).
    "cycles": {
    },
    # Upward imports (importer, imported).
    "upward": {
    },
    # Package imports inside functions that do not say why (file or package, without .py: how many in it).
    "in_function": {
    },
}


@dataclass(frozen=True)
class Import:
    """One import of a package module: who imports what, where, and whether it hides inside a function."""
    importer: str          # dotted module name
    target: str            # dotted module name (a submodule when ``from pkg import submodule``)
    path: str              # the importer's file, relative to the repository
    line: int
    in_function: bool
    lazy_reason: bool      # the statement's lines carry "# lazy: <why>"

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_files(root: Path, package: str = "regpose") -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict,
             package: str) -> list[str]:
    """The package modules one import statement loads (``from pkg import name``: ``pkg.name`` if a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == package]
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = here[:len(here) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != package:
        return []
    return sorted({f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names})


def read_imports(root: Path = REPO, package: str = "regpose") -> list[Import]:
    """Every import of a ``package`` module in ``root/package``, one entry per (statement, imported module)."""
    modules = module_files(root, package)
    found = []
    for module, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        is_package = path.name == "__init__.py"
        rel = path.relative_to(root).as_posix()

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    text = "\n".join(lines[child.lineno - 1:child.end_lineno])
                    for target in _targets(child, module, is_package, modules, package):
                        found.append(Import(module, target, rel, child.lineno, in_function,
                                            bool(LAZY_REASON.search(text))))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(source, filename=str(path)), False)
    return found


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` of the longest prefix naming ``module`` (None: the module has no layer)."""
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, index = p, i
    return index


def upward_imports(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """(importer, imported) -> the imports where a module reaches a higher layer than its own."""
    out = defaultdict(list)
    for imp in imports:
        a, b = layer_of(imp.importer), layer_of(imp.target)
        if a is not None and b is not None and b > a:
            out[(imp.importer, imp.target)].append(imp)
    return dict(out)


def import_cycles(imports: list[Import]) -> list[frozenset[str]]:
    """The strongly connected components of more than one file (Tarjan's algorithm)."""
    graph = defaultdict(set)
    for imp in imports:
        if imp.importer != imp.target:
            graph[imp.importer].add(imp.target)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def unexplained_in_function(imports: list[Import]) -> dict[str, list[Import]]:
    """File -> its in-function package import statements without a ``# lazy: <why>`` comment."""
    out = defaultdict(dict)
    for imp in imports:
        if imp.in_function and not imp.lazy_reason:
            out[imp.path].setdefault(imp.line, imp)
    return {path: list(by_line.values()) for path, by_line in out.items()}


def _edge_lines(imports: list[Import], a: str, b: str) -> str:
    return ", ".join(i.where() for i in imports if i.importer == a and i.target == b)


# ---------------------------------------------------------------------------------------------------- the package

@functools.cache
def package_imports() -> list[Import]:
    found = read_imports()
    assert len(found) > 100, "the import graph reader found almost nothing: is the repository layout unchanged?"
    return found


def test_every_module_has_a_layer():
    missing = [f"{path.relative_to(REPO)}: module {m} is in no layer of tests/test_architecture.py::LAYERS "
               f"(add it to the layer ARCH.md gives it)" for m, path in module_files(REPO).items()
               if layer_of(m) is None]
    assert not missing, "\n".join(missing)


def test_no_import_cycles():
    imports = package_imports()
    known = KNOWN_VIOLATIONS["cycles"]
    found = import_cycles(imports)
    new = [c for c in found if not any(c <= k for k in known)]
    errors = []
    for c in new:
        edges = "; ".join(f"{a} -> {b} ({_edge_lines(imports, a, b)})" for a in sorted(c) for b in sorted(c)
                          if _edge_lines(imports, a, b))
        errors.append(f"import cycle between {', '.join(sorted(c))} (rule: no import cycles between files): {edges}")
    for k in known:
        if k not in found:
            now = [sorted(c) for c in found if c <= k]
            errors.append(f"KNOWN_VIOLATIONS['cycles'] lists the cycle {sorted(k)}, which no longer exists: "
                          + (f"replace it by {now}" if now else "remove the entry"))
    assert not errors, "\n".join(errors)


def _inside(key: str, module: str) -> bool:
    """``module`` is ``key`` or inside the package ``key``."""
    return module == key or module.startswith(key + ".")


def test_layer_order():
    imports = package_imports()
    known = KNOWN_VIOLATIONS["upward"]
    found = upward_imports(imports)
    errors = []
    for (a, b), where in sorted(found.items()):
        if not any(_inside(ka, a) and _inside(kb, b) for ka, kb in known):
            for imp in where:
                errors.append(f"{imp.where()}: {a} (layer {layer_of(a)}: {LAYERS[layer_of(a)][0]}) imports {b} "
                              f"(layer {layer_of(b)}: {LAYERS[layer_of(b)][0]}); rule: a module imports only "
                              f"from its own layer or lower ones")
    errors += [f"KNOWN_VIOLATIONS['upward'] lists {ka} -> {kb}, which no longer exists: remove the entry"
               for ka, kb in known if not any(_inside(ka, a) and _inside(kb, b) for a, b in found)]
    assert not errors, "\n".join(errors)


def _entry_of(path: str, keys) -> str:
    """The longest key (a path without .py) covering the file ``path``, else the file's own key."""
    covering = [k for k in keys if path == k + ".py" or path.startswith(k + "/")]
    return max(covering, key=len) if covering else path[:-len(".py")]


def test_package_imports_inside_functions_say_why():
    imports = package_imports()
    known = KNOWN_VIOLATIONS["in_function"]
    by_entry = defaultdict(list)
    for path, where in unexplained_in_function(imports).items():
        by_entry[_entry_of(path, known)] += where
    errors = []
    for entry, where in sorted(by_entry.items()):
        allowed = known.get(entry, (0, ""))[0]
        if len(where) > allowed:
            listed = "\n  ".join(f"{i.where()}: imports {i.target}" for i in where)
            errors.append(f"{entry}: {len(where)} package imports inside functions without a '# lazy: <why>' "
                          f"comment ({allowed} known); rule: package imports at module top unless the line says "
                          f"why (optional heavy dependency, CLI start-up time), never to dodge a cycle:\n  {listed}")
    for entry, (allowed, _) in sorted(known.items()):
        now = len(by_entry.get(entry, []))
        if now < allowed:
            errors.append(f"KNOWN_VIOLATIONS['in_function'] allows {allowed} unexplained in-function imports in "
                          f"{entry}, now {now}: " + (f"lower it to {now}" if now else "remove the entry"))
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------------------------------------ the checker on a toy tree

def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checker_finds_cycles_upward_and_unexplained_imports(tmp_path):
    """The reader resolves relative imports (``from . import x``, ``from ..pkg import name``), sees imports inside
    functions, and each rule reports what it must: a cycle, an upward import, an in-function import without
    ``# lazy:``; an explained one and a module-top one pass."""
    _write_package(tmp_path, {
        "regpose/__init__.py": "",
        "regpose/errors.py": "",
        "regpose/data/__init__.py": "from . import datasets\n",
        "regpose/data/datasets.py": """\
            from ..errors import *
            def boxes():
                from ..models.net import Net
                from ..inference import runner  # lazy: optional heavy dependency
            """,
        "regpose/models/__init__.py": "",
        "regpose/models/net.py": "import regpose.data.datasets\nfrom regpose.models import helpers\n",
        "regpose/models/helpers.py": "",
        "regpose/inference/__init__.py": "",
        "regpose/inference/runner.py": "",
    })
    imports = read_imports(tmp_path)
    edges = {(i.importer, i.target, i.in_function, i.lazy_reason) for i in imports}
    assert edges == {
        ("regpose.data", "regpose.data.datasets", False, False),
        ("regpose.data.datasets", "regpose.errors", False, False),
        ("regpose.data.datasets", "regpose.models.net", True, False),
        ("regpose.data.datasets", "regpose.inference.runner", True, True),
        ("regpose.models.net", "regpose.data.datasets", False, False),
        ("regpose.models.net", "regpose.models.helpers", False, False),
    }
    assert import_cycles(imports) == [frozenset({"regpose.data.datasets", "regpose.models.net"})]
    assert set(upward_imports(imports)) == {("regpose.data.datasets", "regpose.models.net"),
                                            ("regpose.data.datasets", "regpose.inference.runner")}
    unexplained = unexplained_in_function(imports)
    assert list(unexplained) == ["regpose/data/datasets.py"]
    assert [(i.line, i.target) for i in unexplained["regpose/data/datasets.py"]] == [(3, "regpose.models.net")]


def test_layers_follow_the_architecture():
    """The issue's two stated rules, on modules of today and of the target tree."""
    data_side = ("regpose.data.datasets", "regpose.codecs.topdown", "regpose.evaluation.coco", "regpose.ops.nms")
    above_models = ("regpose.inference.predictor", "regpose.engine.trainer", "regpose.cli.train",
                    "regpose.compat.dekr")
    for low in data_side:
        for high in ("regpose.models.dekr", *above_models):
            assert layer_of(low) < layer_of(high), (low, high)
    for high in above_models:
        assert layer_of("regpose.models.layers.rle") < layer_of(high)
    assert layer_of("regpose.errors") < layer_of("regpose.data") < layer_of("regpose.config")
    assert layer_of("regpose.models") < layer_of("regpose.config") == layer_of("regpose.checkpoint") < layer_of("regpose.inference")


def test_known_entries_cover_a_module_and_the_package_it_becomes():
    """An entry for a method file still covers it once split into a package; a package's __init__ entry never
    absorbs its siblings (their imports stay unknown violations)."""
    keys = ["regpose/models/dekr", "regpose/models/__init__", "regpose/cli"]
    assert _entry_of("regpose/models/dekr.py", keys) == "regpose/models/dekr"
    assert _entry_of("regpose/models/dekr/loss.py", keys) == "regpose/models/dekr"
    assert _entry_of("regpose/models/__init__.py", keys) == "regpose/models/__init__"
    assert _entry_of("regpose/models/backbones.py", keys) == "regpose/models/backbones"
    assert _entry_of("regpose/clitypes.py", keys) == "regpose/clitypes"
    assert _inside("regpose.models.dekr", "regpose.models.dekr.decode")
    assert not _inside("regpose.models.dekr", "regpose.models.dekr_extra")
