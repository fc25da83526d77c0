"""The import structure docs/development.md's layout describes: no cycles, and a config loads without torch."""

import subprocess
import sys
from pathlib import Path

import grimp


def strongly_connected(graph, modules):
    """Tarjan's strongly connected components of the import graph restricted to ``modules``."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
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
            out.append(component)

    sys.setrecursionlimit(10_000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = grimp.build_graph("evalkit", "evalkit_metrics", cache_dir=None)
    modules = {m for m in graph.modules if m.split(".")[0] in ("evalkit", "evalkit_metrics")}
    cycles = [sorted(c) for c in strongly_connected(graph, modules) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_a_cycle_is_found_when_there_is_one():
    graph = grimp.ImportGraph()
    for a, b in (("x.a", "x.b"), ("x.b", "x.c"), ("x.c", "x.a"), ("x.c", "x.d")):
        graph.add_import(importer=a, imported=b)
    components = [c for c in strongly_connected(graph, set(graph.modules)) if len(c) > 1]
    assert components == [{"x.a", "x.b", "x.c"}]


def test_importing_the_config_imports_no_model_library():
    code = ("import sys, evalkit.config; evalkit.config.load_config('configs/quickstart.yaml'); "
            "bad = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
