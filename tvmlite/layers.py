"""tvmlite's layers and the import graph that must respect them.

Every module of the package sits in one layer; a module may import its own layer and the layers
below it, never one above (imports inside functions count too: a lazy import is still a
dependency). Folders (packages) must not import each other in a circle either.

    python -m tvmlite.layers        # prints the layers, upward imports, folder cycles, lazy imports

tests/test_layers.py runs the same walk and fails on any upward import or folder cycle. Only the
standard library and ``ast`` are used: this module imports nothing of tvmlite.
"""
from __future__ import annotations

import ast
import functools
import pathlib
import sys
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parent  # tvmlite/
PASSES_DIR = ROOT.parent / "passes"  # installed as tvmlite.passes (tvmlite/passes links here)

# (layer, module prefixes), bottom first. The longest matching prefix decides a module's layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # outputs: the atomic, input-safe file writer; it imports only errors, and both the ONNX exporter
    # and the TVM artifact writer need it, so it sits with errors at the bottom
    ("errors", ("tvmlite.errors", "tvmlite.limits", "tvmlite.layers", "tvmlite.outputs")),
    ("ir", ("tvmlite.ir",)),
    ("ops", ("tvmlite.ops",)),
    ("onnx-io", ("tvmlite.frontend", "tvmlite.export")),  # load, save, functions, shape inference
    ("runtime", ("tvmlite.backends.numpy", "tvmlite.backends", "tvmlite.runtime", "tvmlite.inputs",
                 "tvmlite.calibration", "tvmlite.metrics", "tvmlite.checkset")),
    ("passes", ("tvmlite.passes", "tvmlite.quant")),
    ("tvm", ("tvmlite.backends.tvm",)),
    ("driver", ("tvmlite",)),  # everything else: optimize, compare, analysis, checker, cli, zoo
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str:
    best, best_len = "driver", -1
    for name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = name, len(p)
    return best


def folder_of(module: str) -> str:
    """The unit cycles are counted between: a module's package (tvmlite.ops.conv -> tvmlite.ops),
    except that the modules directly in tvmlite/ (errors at the bottom, cli at the top) are each
    their own unit."""
    pkg = module if _is_package(module) else module.rpartition(".")[0]
    return module if pkg == "tvmlite" else pkg


def _is_package(module: str) -> bool:
    return module in _MODULES and _MODULES[module].name == "__init__.py"


def _discover() -> dict[str, pathlib.Path]:
    mods: dict[str, pathlib.Path] = {}
    for base, prefix in ((ROOT, "tvmlite"), (PASSES_DIR, "tvmlite.passes")):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            if base == ROOT and rel.parts and rel.parts[0] == "passes":
                continue  # the link to PASSES_DIR: walked once, below
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


_MODULES = _discover()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _internal(name: str) -> str | None:
    """``name`` spelled as a tvmlite module name, or None when it is no tvmlite name."""
    if name == "passes" or name.startswith("passes."):
        return "tvmlite." + name
    return name if name == "tvmlite" or name.startswith("tvmlite.") else None


def _target(name: str) -> str | None:
    """The tvmlite module an imported name refers to (a module, or the module defining a name)."""
    name = _internal(name)
    while name:
        if name in _MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every tvmlite-internal import."""
    return list(_walk()[0])


def unresolved() -> list[tuple[str, str, int]]:
    """(importer, module, line) for imports of tvmlite modules that do not exist: a module that
    moved and an importer nobody updated (after a merge, say), which the layer check alone would
    count as an import of the package above it."""
    return list(_walk()[1])


@functools.lru_cache(maxsize=1)
def _walk() -> tuple[tuple, tuple]:
    # parsing all modules takes seconds on a loaded machine; the tests ask several times
    out, missing = [], []
    for mod, path in _MODULES.items():
        for node, in_function in _import_nodes(str(path), path.stat().st_mtime_ns):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                sources = names
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, node)
                names = [f"{src}.{a.name}" if f"{src}.{a.name}" in _MODULES else src for a in node.names]
                sources = [src]
            else:
                continue
            for src in sources:
                full = _internal(src)
                if full and full not in _MODULES:
                    missing.append((mod, full, node.lineno))
            for n in dict.fromkeys(names):
                t = _target(n)
                if t and t != mod:
                    out.append((mod, t, node.lineno, in_function))
    return tuple(out), tuple(missing)


@functools.lru_cache(maxsize=None)
def _import_nodes(path: str, _mtime_ns: int) -> tuple:
    """(import node, inside a function body) of one file, in line order, parsed once per version of
    the file: parsing is most of a walk (~1.5 s of ~2.5 s for 190 modules), and a test that walks a
    changed module table walks the same files again."""
    tree = ast.parse(pathlib.Path(path).read_text(), path)
    found, stack = [], [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, in_function))
            continue
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))
    return tuple(sorted(found, key=lambda f: (f[0].lineno, f[0].col_offset)))


def upward(edges=None) -> list[tuple[str, str, int, bool]]:
    edges = imports() if edges is None else edges
    return [e for e in edges if RANK[layer_of(e[1])] > RANK[layer_of(e[0])]]


def folder_cycles(edges=None) -> list[list[str]]:
    """Groups of folders (more than one) that import each other in a circle."""
    edges = imports() if edges is None else edges
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _, _ in edges:
        fa, fb = folder_of(a), folder_of(b)
        if fa != fb:
            graph[fa].add(fb)
    return [sorted(c) for c in _scc(graph) if len(c) > 1]


def _scc(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def report() -> str:
    edges = imports()
    up = upward(edges)
    cyc = folder_cycles(edges)
    lazy = [e for e in edges if e[3]]
    lines = [f"{len(_MODULES)} modules, {len(edges)} internal imports, {len(lazy)} inside functions"]
    for name, _ in LAYERS:
        mods = sorted(m for m in _MODULES if layer_of(m) == name)
        n_lazy = sum(layer_of(a) == name for a, *_ in lazy)
        lines.append(f"  {name:8s} {len(mods):3d} modules, {n_lazy:3d} imports inside functions")
    lines.append(f"upward imports: {len(up)}")
    lines += [f"  {a} ({layer_of(a)}) -> {b} ({layer_of(b)})  line {ln}{' [in function]' if f else ''}"
              for a, b, ln, f in sorted(up)]
    lines.append(f"folder cycles: {len(cyc)}")
    lines += ["  " + " <-> ".join(c) for c in cyc]
    missing = unresolved()
    lines.append(f"imports of tvmlite modules that do not exist: {len(missing)}")
    lines += [f"  {a} -> {b}  line {ln}" for a, b, ln in sorted(missing)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
