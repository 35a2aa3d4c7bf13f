"""Tests for benchmarks/speed/bench_revisions.py (cross-revision before/after rows)."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ is not a package: load the script by path, as `python benchmarks/speed/bench_revisions.py` runs it
bench_revisions = load_script("benchmarks/speed/bench_revisions.py")


@pytest.mark.parametrize(("text", "expected"), [
    ("before=518870b", ("before", "518870b", False)),
    ("after=WORKTREE:malloc", ("after", "WORKTREE", True)),
])
def test_parse_variant(text, expected):
    assert bench_revisions.parse_variant(text) == expected


@pytest.mark.parametrize("text", ["noequals", "=HEAD", "x=", "x=HEAD:fast"])
def test_parse_variant_rejects_nonsense(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=REV"):
        bench_revisions.parse_variant(text)


def test_source_tree_extracts_a_revision(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    assert bench_revisions.source_tree("WORKTREE", tmp_path) == ROOT
    tree = bench_revisions.source_tree("HEAD", tmp_path)
    assert (tree / "moldiff" / "__init__.py").is_file() and tree != ROOT


def test_runs_a_workload_in_a_fresh_process_and_writes_json(tmp_path):
    out = tmp_path / "rev.json"
    result = bench_revisions.main(["--variant", "now=WORKTREE:malloc", "--workloads", "sample", "--config", "tiny",
                                   "--sample-num", "2", "--sample-steps", "1", "--rounds", "1", "--threads", "1",
                                   "--out", str(out)])
    (row,) = result["rows"]
    assert row["variant"] == "now" and row["malloc_tuning"] and row["seconds"] > 0 and len(row["times"]) == 1
    assert json.loads(out.read_text())["rows"][0]["mol_per_s"] == pytest.approx(2 / row["seconds"])
