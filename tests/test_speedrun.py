"""benchmarks/quality/speedrun.py end to end on a tiny config: run (resumable), evaluate, report, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speedrun():
    return load_script("benchmarks/quality/speedrun.py")


def test_overrides_parse_and_reject_unknown_keys(speedrun):
    from moldiff.config import ExperimentConfig

    cfg = speedrun.apply_overrides(ExperimentConfig(), ["diffusion.parameterization=x0", "diffusion.snr_clamp=[0,5]",
                                                       "model.self_condition=true", "train.lr=1e-3"])
    assert cfg.diffusion.parameterization == "x0" and cfg.diffusion.snr_clamp == (0.0, 5.0)
    assert cfg.model.self_condition is True and cfg.train.lr == 1e-3
    with pytest.raises(ValueError):
        speedrun.apply_overrides(ExperimentConfig(), ["model.nope=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        speedrun.apply_overrides(ExperimentConfig(), ["lr=1"])


def test_run_resume_evaluate_report(speedrun, tmp_path):
    rows, run_dir = tmp_path / "rows.jsonl", tmp_path / "run"
    common = ["--config", str(ROOT / "benchmarks/configs/tiny.yaml"), "--num-samples", "4", "--steps", "5",
              "--rows", str(rows), "--run-dir", str(run_dir), "--set", "train.compile=false",
              "--set", "diffusion.parameterization=x0", "--set", "diffusion.loss_weighting=snr_clamp"]
    speedrun.main(["run", "--name", "tiny_x0", "--passes", "64", *common])
    speedrun.main(["run", "--name", "tiny_x0", "--passes", "128", *common])  # continues the same run
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["passes"] for r in got] == [64, 128]
    assert all(r["num_molecules"] == 4 and 0 <= r["atom_stability"] <= 1 for r in got)
    assert got[1]["overrides"][-2:] == ["diffusion.parameterization=x0", "diffusion.loss_weighting=snr_clamp"]
    speedrun.main(["evaluate", "--name", "tiny_eval", "--checkpoint", str(run_dir / "last.pt"), "--num-samples", "3",
                   "--steps", "5", "--rows", str(rows)])
    assert json.loads(rows.read_text().splitlines()[-1])["passes"] == 128
    speedrun.main(["report", "--rows", str(rows), "--out", str(tmp_path)])
    table = (tmp_path / "speedrun_cpu.md").read_text()
    assert "tiny_x0" in table and "tiny_eval" in table
    assert (tmp_path / "speedrun_cpu.png").stat().st_size > 1000
