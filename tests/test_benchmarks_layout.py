"""The layout of ``benchmarks/`` (see its README, "Layout"): scripts grouped by purpose, no script
importing another (shared code lives in ``benchmarks/_common.py``), and every documented
``benchmarks/...py`` path pointing at a file that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
GROUPS = ("speed", "quality", "ops")
SCRIPTS = sorted(p for g in GROUPS for p in (BENCH / g).glob("*.py"))


def _imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_scripts_live_in_a_group_folder():
    loose = sorted(p.name for p in BENCH.glob("*.py") if p.name != "_common.py")
    assert not loose, f"put {loose} into one of benchmarks/{{{','.join(GROUPS)}}}/ (see benchmarks/README.md)"
    assert SCRIPTS


@pytest.mark.parametrize("path", [*SCRIPTS, BENCH / "_common.py"], ids=lambda p: str(p.relative_to(BENCH)))
def test_no_script_imports_another_script(path):
    stems = {p.stem for p in SCRIPTS}
    bad = sorted(_imported_top_names(path) & stems)
    assert not bad, f"{path.relative_to(ROOT)} imports the script(s) {bad}; move shared code to benchmarks/_common.py"


def test_documented_benchmark_paths_exist():
    docs = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md")),
            *sorted(BENCH.rglob("README.md")), *sorted((ROOT / "moldiff").rglob("*.py")), *SCRIPTS]
    missing = []
    for doc in docs:
        for m in re.finditer(r"benchmarks/[\w./-]+?\.py\b", doc.read_text(encoding="utf-8")):
            if not (ROOT / m.group(0)).is_file():
                missing.append(f"{doc.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, missing
