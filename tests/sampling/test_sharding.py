"""Sharded sampling (moldiff/sampling/sharding.py): order-preserving gather over gloo, torchrun CLI, devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from moldiff.cli import main
from moldiff.sampling.sharding import Shard, gather_in_order, resolve_device

ROOT = Path(__file__).resolve().parents[2]


def _gather_worker(rank: int, world: int, init_file: Path, num_batches: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        own = ((k, f"batch-{k}") for k in range(rank, num_batches, world))
        queue.put((rank, list(gather_in_order(own, Shard(rank, world, rank)))))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_batches", [5, 1])
def test_gather_in_order_over_gloo(tmp_path: Path, num_batches: int, spawn_ranks) -> None:
    results = spawn_ranks(_gather_worker, 2, tmp_path / "init", num_batches)
    assert results[0] == [f"batch-{k}" for k in range(num_batches)]  # rank 0 gets everything, in order
    assert results[1] == []


def test_single_process_gather_is_identity() -> None:
    assert list(gather_in_order(iter([(0, "a"), (1, "b")]), Shard())) == ["a", "b"]


def test_shard_from_env(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Shard.from_env() == Shard(1, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        Shard.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="integers"):
        Shard.from_env()


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("quantum:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", str(ROOT / "benchmarks/configs/tiny.yaml"), "--out", str(run)]) == 0
    return run / "last.pt"


def test_torchrun_two_processes_write_the_single_process_file(tiny_model: Path, tmp_path: Path) -> None:
    args = ["sample", "--model", str(tiny_model), "--num", "9", "--steps", "4", "--seed", "3",
            "--batch-atoms", "20", "--no-evaluate"]
    assert main([*args, "--out", str(tmp_path / "single.xyz")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "moldiff.cli", "--", *args, "--out", str(tmp_path / "sharded.xyz")]  # "--": torchrun
    # would otherwise read "--num" as an ambiguous abbreviation of its own "--numa-binding"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "sharded.xyz").read_text() == (tmp_path / "single.xyz").read_text()
    assert "wrote 9 molecules" in res.stdout


def test_cli_device_and_flag_errors(tiny_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.sdf"
    base = ["sample", "--model", str(tiny_model), "--num", "2", "--steps", "2", "--out", str(out)]
    for tail, message in ((["--device", "tpu"], "unknown device"), (["--grid", "g.png", "--no-evaluate"], "grid"),
                          (["--sampler", "ddim", "--eta", "2"], "eta"), (["--eta", "0.5"], "ddim")):
        assert main(base + tail) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


def test_one_resolve_device_for_training_and_sampling() -> None:
    import moldiff.training.run as run

    assert run.resolve_device is resolve_device  # training uses the sampling resolver, no copy
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
