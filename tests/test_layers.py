"""The package's layering (``r2ec.LAYERS``): no import from a lower layer to a higher one, baselines and recpo
apart, no import cycle between modules, and no source file over ``MAX_LINES`` lines."""

from __future__ import annotations

import ast
from pathlib import Path


import r2ec

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "r2ec").rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def layer_of(mod: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(r2ec.LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{mod}: no layer in r2ec.LAYERS"
    return best


def _resolve(name: str) -> str:
    """The module an imported name lives in: ``r2ec.a.b`` may be module ``r2ec.a.b`` or a name of ``r2ec.a``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(mod: str) -> list[tuple[str, int]]:
    """``(imported r2ec module, line)`` of every import in ``mod``, at any depth (lazy imports included)."""
    f = MODULES[mod]
    pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base else [a.name for a in node.names]
        for n in names:
            if n == "r2ec" or n.startswith("r2ec."):
                target = _resolve(n)
                if target and target != mod:
                    out.append((target, node.lineno))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_imports_only_go_down():
    bad = []
    for m, deps in GRAPH.items():
        for d, line in deps:
            if d == "r2ec":  # the package itself (its version, the layer table)
                continue
            if layer_of(d) > layer_of(m):
                bad.append(f"{MODULES[m].relative_to(SRC)}:{line}: {m} ({r2ec.LAYERS[layer_of(m)][0]}) imports "
                           f"{d} ({r2ec.LAYERS[layer_of(d)][0]})")
            for a, b in r2ec.SIBLINGS_APART:
                if (m == a or m.startswith(a + ".")) and (d == b or d.startswith(b + ".")):
                    bad.append(f"{MODULES[m].relative_to(SRC)}:{line}: {m} imports its sibling {d}")
    assert not bad, "imports against the layer order (r2ec.LAYERS):\n" + "\n".join(bad)


def test_no_import_cycles():
    # a package's __init__ re-exporting its submodules is not a cycle of its own (edges from a package to its
    # own submodules are left out)
    graph = {m: {d for d, _ in deps if not d.startswith(m + ".")} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_over_max_lines():
    long = {str(f.relative_to(SRC)): n for f in MODULES.values() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them): {long}"


def test_lazy_imports_are_seen():
    """Function-local imports count like module-level ones (the CLI imports every stage lazily)."""
    assert "r2ec.pipeline.sync" in {d for d, _ in GRAPH["r2ec.cli"]}


def test_every_method_entry_resolves():
    """The registry names its entries as strings (imported when called, so r2ec.methods stays at the bottom of
    the layers): each must load, and live in the layer its kind belongs to."""
    from r2ec import methods
    home = {"reference": "r2ec.baselines", "classic": "r2ec.baselines", "generative": "r2ec.baselines",
            "llm": "r2ec.baselines", "r2ec": "r2ec.recpo"}
    for name in methods.names():
        m = methods.get(name)
        if m.section is not None:
            continue  # a plugin another test registered: its entries live outside the package
        for entry in filter(None, (m.train, m.scorer)):
            assert entry.startswith(home[m.kind] + "."), (name, entry)
            assert callable(methods.resolve(entry)), (name, entry)
