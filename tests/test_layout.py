"""The package reads like the data flow: imports go one way, no cycles, small modules.

Stages, in the order data flows (helpers/__init__.py maps them): the shared top-level modules,
model, data, sae, training, analysis, report. A module may import from its own stage or an earlier
one; every import counts, including those inside functions and under `if TYPE_CHECKING:` (a type
annotation that needs a later module is the same dependency, and a cycle there is still a cycle).
"""

import ast
import shutil
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
STAGES = ("model", "data", "sae", "training", "analysis", "report")  # after the shared top level
ENTRY_POINTS = {
    "helpers.compare",
    "helpers.interp",
}  # `python -m` commands: above every stage, imported by none
MAX_TOP_LEVEL_MODULES = 10
MAX_LINES = 450


def _module_name(root: Path, path: Path) -> str:
    parts = ("helpers", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(root: Path, dotted: str) -> str:
    """The module a dotted name refers to: itself if it is a module or package of the tree, else its parent
    (`from helpers.sae.base import SAE` -> helpers.sae.base)."""
    while dotted.count(".") >= 1:
        rel = Path(*dotted.split(".")[1:])
        if (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists():
            return dotted
        dotted = dotted.rsplit(".", 1)[0]
    return dotted


def _imports(root: Path, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    me = _module_name(root, path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {_resolve(root, n) for n in names if n == "helpers" or n.startswith("helpers.")}
    return out - {me}


def import_graph(root: Path = HELPERS) -> dict[str, set[str]]:
    """{module: the helpers modules it imports} over every .py file under `root`."""
    return {_module_name(root, p): _imports(root, p) for p in sorted(root.rglob("*.py"))}


def stage(module: str) -> int:
    """0 for the shared top level, then 1.. in STAGES order; entry points above them all."""
    if module in ENTRY_POINTS:
        return len(STAGES) + 1
    parts = module.split(".")
    return STAGES.index(parts[1]) + 1 if len(parts) > 1 and parts[1] in STAGES else 0


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a later stage into an earlier one; the root package's map (helpers/__init__) imports
    nothing."""
    return sorted(
        f"{a} -> {b}"
        for a, deps in graph.items()
        for b in deps
        if stage(b) > stage(a) or (a == "helpers" and b != "helpers")
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_flow_one_way_with_no_cycles():
    graph = import_graph()
    assert not any(ENTRY_POINTS & deps for deps in graph.values()), "nothing imports an entry point"
    assert len(graph) > 40 and graph["helpers.training.train"] >= {
        "helpers.sae.fast.step",
        "helpers.training.config",
    }
    assert upward_imports(graph) == [], "a module imports from a later stage; move the code or the import"
    assert cycles(graph) == [], "import cycle; give the shared code one home in the earlier module"


def test_the_checks_fail_on_a_planted_cycle_and_an_upward_import(tmp_path):
    root = tmp_path / "helpers"
    shutil.copytree(HELPERS, root, ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    store = root / "data" / "store.py"
    store.write_text(store.read_text() + "\n\ndef _late():\n    from helpers.data import collect  # noqa\n")
    corpora = root / "data" / "corpora.py"
    corpora.write_text(
        corpora.read_text()
        + "\n\ndef _later():\n    from helpers.analysis.matching import factor_pairs  # noqa\n"
    )
    graph = import_graph(root)
    assert any({"helpers.data.collect", "helpers.data.store"} <= set(c) for c in cycles(graph))
    assert "helpers.data.corpora -> helpers.analysis.matching" in upward_imports(graph)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_checking_imports_are_edges_too(tmp_path):
    root = tmp_path / "helpers"
    (root / "sae").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sae" / "__init__.py").write_text("")
    (root / "sae" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from helpers.report import b\nfrom helpers.sae import c\n"
    )
    (root / "sae" / "c.py").write_text("")
    (root / "report").mkdir()
    (root / "report" / "__init__.py").write_text("")
    (root / "report" / "b.py").write_text("")
    graph = import_graph(root)
    assert graph["helpers.sae.a"] == {"helpers.report.b", "helpers.sae.c"}
    assert upward_imports(graph) == ["helpers.sae.a -> helpers.report.b"]


def test_top_level_holds_few_modules_and_no_module_is_long():
    top = sorted(p.stem for p in HELPERS.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"helpers/ top level: {top}; put stage code in its subpackage"
    assert sorted(p.name for p in HELPERS.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        STAGES
    )
    long = {
        str(p.relative_to(HELPERS)): n
        for p in HELPERS.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules (> {MAX_LINES} lines): {long}"


@pytest.mark.parametrize("stage_name", STAGES)
def test_every_stage_package_says_what_it_holds(stage_name):
    doc = ast.get_docstring(ast.parse((HELPERS / stage_name / "__init__.py").read_text()))
    assert doc and len(doc) > 40
