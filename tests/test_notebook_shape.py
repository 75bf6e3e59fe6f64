"""The notebooks read narrative first, as ARENA's do, and each section runs after the setup cell.

Checked statically on the committed notebooks (no kernel): markdown lines >= code lines, no code cell
over MAX_CELL_LINES, helpers modules imported under their own names (no one-letter aliases), and every
name a section reads is defined in the setup section or in that section itself, so a reader can jump to
any section, run the setup cell and then that section alone."""

import ast
import builtins
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CELL_LINES = 25


def _cells(path: Path) -> list[tuple[str, str]]:
    import nbformat

    return [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]


def _lines(source: str) -> int:
    return len([ln for ln in source.splitlines() if ln.strip()])


def _python(source: str) -> str:
    """The cell without IPython magics and shell lines."""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())


def names(source: str) -> tuple[set[str], set[str]]:
    """(names the code binds anywhere: assignments, loop and comprehension targets, imports, defs and
    their parameters; names it reads)."""
    tree = ast.parse(_python(source))
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound, read


def sections(cells: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """[(heading, code sources)] split at level-2 markdown headings; cells before the first heading
    belong to the first section."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for kind, src in cells:
        if kind == "markdown":
            m = re.search(r"^## (.+)$", src, re.M)
            if m:
                out.append((m.group(1).strip(), []))
        elif kind == "code":
            out[-1][1].append(src)
    return [s for s in out if s[1] or s[0]]


def section_leaks(cells: list[tuple[str, str]]) -> dict[str, list[str]]:
    """{section heading: names it reads that neither the setup section nor itself defines}."""
    secs = sections(cells)
    setup_i = next(i for i, (h, _) in enumerate(secs) if "setup" in h.lower())
    known = set(dir(builtins)) | {"display", "get_ipython"}
    for _, srcs in secs[: setup_i + 1]:
        for s in srcs:
            known |= names(s)[0]
    leaks = {}
    for heading, srcs in secs[setup_i + 1 :]:
        bound, read = set(), set()
        for s in srcs:
            b, r = names(s)
            bound, read = bound | b, read | r
        missing = sorted(read - bound - known)
        if missing:
            leaks[heading] = missing
    return leaks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebook_is_narrative_first_with_short_cells(path):
    cells = _cells(path)
    md = sum(_lines(s) for k, s in cells if k == "markdown")
    code = sum(_lines(s) for k, s in cells if k == "code")
    assert md >= code, f"{path.name}: {md} markdown lines < {code} code lines; move logic into helpers/"
    long = [(i, _lines(s)) for i, (k, s) in enumerate(cells) if k == "code" and _lines(s) > MAX_CELL_LINES]
    assert not long, f"{path.name}: code cells over {MAX_CELL_LINES} lines (cell, lines): {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_section_runs_after_the_setup_cell_alone(path):
    leaks = section_leaks(_cells(path))
    assert not leaks, f"{path.name}: sections read names defined only in other sections: {leaks}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_helpers_modules_are_imported_under_their_own_names(path):
    short = []
    for kind, src in _cells(path):
        if kind != "code":
            continue
        for node in ast.walk(ast.parse(_python(src))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = getattr(node, "module", None) or ""
                for a in node.names:
                    full = f"{mod}.{a.name}" if mod else a.name
                    if full.startswith("helpers") and a.asname and len(a.asname) <= 2:
                        short.append(f"{full} as {a.asname}")
    assert not short, f"{path.name}: import helpers modules under their own names, not {short}"


def test_the_section_check_finds_a_name_from_another_section():
    cells = [
        ("markdown", "# t"),
        ("markdown", "## Setup"),
        ("code", "import numpy as np\nx = 1"),
        ("markdown", "## 1 · a"),
        ("code", "cut = np.median([x])\nf = lambda v: v + cut"),
        ("markdown", "## 2 · b"),
        ("code", "y = cut + x\nfor i in range(3):\n    print(i)"),
    ]
    assert section_leaks(cells) == {"2 · b": ["cut"]}
