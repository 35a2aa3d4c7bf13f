"""Tests for benchmarks/quality/steps_vs_quality.py's --merge mode (table and plot from saved rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

# benchmarks/ is not a package: load the script by path, as `python benchmarks/quality/steps_vs_quality.py` runs it
steps_vs_quality = load_script("benchmarks/quality/steps_vs_quality.py")


def part(path: Path, sampler: str, seed: int = 0) -> Path:
    rows = [{"sampler": sampler, "steps": s, "num": 10, "seconds": 1.0, "mol_per_s": 10.0, "atom_stability": 0.8,
             "mol_stability": 0.1, "validity": 0.5, "uniqueness": 1.0, "novelty": None} for s in (10, 100)]
    path.write_text(json.dumps({"model": "qm9", "num": 10, "seed": seed, "machine": {}, "rows": rows}))
    return path


def test_merge_joins_rows_and_writes_table_and_plot(tmp_path):
    out = tmp_path / "svq.json"
    rows = steps_vs_quality.main(["--merge", str(part(tmp_path / "a.json", "ancestral")),
                                  str(part(tmp_path / "b.json", "dpm2sde")), "--out", str(out)])
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ancestral", 10), ("ancestral", 100),
                                                           ("dpm2sde", 10), ("dpm2sde", 100)]
    assert len(json.loads(out.read_text())["merged_from"]) == 2
    assert "| dpm2sde | 100 | 80.0 | 10.0 | 50.0 | 100.0 | – |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_refuses_runs_with_different_seeds(tmp_path):
    with pytest.raises(SystemExit, match="differ"):
        steps_vs_quality.main(["--merge", str(part(tmp_path / "a.json", "ancestral")),
                               str(part(tmp_path / "b.json", "dpm2sde", seed=1)), "--out", str(tmp_path / "x.json")])
