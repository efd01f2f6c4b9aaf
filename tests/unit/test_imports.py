"""The package's imports form no circle, and no module is over 400 lines.

Reference: the import graph read from the source with ``ast`` (every import statement, at module level or
inside a function), resolved to the modules of ``lbfl_mpi``; a circle is a strongly connected component
of more than one module (Tarjan), or a module importing itself."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "lbfl_mpi"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if _is_package(path) else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                subs = [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in mods]
                targets = subs
                # the package itself runs unless it is one the importer already sits in
                if len(subs) < len(node.names) or not (mod == src or mod.startswith(src + ".")):
                    targets.append(src)
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
                elif t == mod:
                    graph[mod].add(mod)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node, and self-loops (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert sorted(circles(g)) == [["a", "b", "c"], ["e"]]


def test_the_graph_sees_relative_and_absolute_imports():
    g = import_graph()
    assert "lbfl_mpi.config.fields" in g["lbfl_mpi.config.schema"]  # from .fields import ...
    assert "lbfl_mpi.config" in g["lbfl_mpi.cli"]                   # from .config import ...


def test_no_import_circle_in_the_package():
    assert circles(import_graph()) == []


def test_config_layers_import_one_way():
    g = import_graph()
    order = ["fields", "schema_fl", "schema_scaling", "schema", "checks", "load"]
    for i, low in enumerate(order):
        inside = {t for t in g[f"lbfl_mpi.config.{low}"] if t.startswith("lbfl_mpi.config")}
        assert inside <= {f"lbfl_mpi.config.{m}" for m in order[:i]}, (low, inside)


def test_no_module_over_400_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
