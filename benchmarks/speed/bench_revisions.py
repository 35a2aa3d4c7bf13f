"""Before/after rows across code revisions and process settings, each run in a fresh process.

    .venv/bin/python benchmarks/speed/bench_revisions.py --variant before=518870b \\
        --variant in-place=WORKTREE --variant in-place+malloc=WORKTREE:malloc \\
        [--workloads sample train] [--config small] [--threads 2] [--rounds 5]

Some optimisations cannot be switched inside one process: a change to the code itself (measured
against the commit before it) and process-wide settings such as the allocator tuning of
:mod:`moldiff.runtime`. Each ``--variant NAME=REV[:malloc]`` runs the ``moldiff`` package of git
revision ``REV`` (``WORKTREE``: the working tree; other revisions are extracted with ``git
archive``), with :func:`moldiff.runtime.tune_cpu_allocator` applied when ``:malloc`` is given
(what the CLI does). The variants run in alternating rounds, one fresh process per measurement, so
load drift on a shared machine hits all alike; each figure is the median over ``--rounds``.

Workloads (random weights of ``--config``; speed does not depend on them):

* ``sample``: ``--sample-num`` QM9-size molecules (atom counts from QM9's train histogram) in one
  batch, ``--sample-steps`` steps of ``--method``, after a one-step warm-up;
* ``train``: ``--train-steps`` trainer-style optimiser steps on a batch of 64 random QM9-size
  molecules (``_common.train_steps``, as ``speed/bench_training.py``), after two warm-up steps;
* ``cli``: the wall time of the whole command ``moldiff sample --model qm9 --num <--sample-num>
  --seed 0 --out <tmp>`` (start-up, the shipped model's recommended sampler, evaluation, writing),
  the README's headline; ``--threads`` does not apply (the CLI uses torch's default).

Writes ``benchmarks/results/bench_revisions_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMON = str(HERE.parent)  # benchmarks/: the shared _common helpers, imported late (keeps the parent light)


def child(args: argparse.Namespace) -> None:
    """Run one workload in this process and print ``{"seconds": ...}`` as the last line."""
    import torch

    if os.environ.get("MOLDIFF_TUNE_MALLOC") == "1":
        from moldiff.runtime import tune_cpu_allocator

        if not tune_cpu_allocator():
            raise SystemExit("allocator tuning requested but not available")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, COMMON)
    from _common import atom_counts, load_config, random_batch, random_process, train_steps

    proc = random_process(load_config(args.config), "cpu")
    if args.child == "sample":
        # The sampler core on random weights, not moldiff.load_model: there is no checkpoint to load
        # (speed does not depend on the weights), the same call must run on old revisions, and one
        # batch of exactly these sizes is timed (the public API would regroup it).
        from moldiff.sampling.sampler import Sampler

        counts = atom_counts(args.sample_num, seed=0)
        sampler = Sampler(proc)
        sampler.sample(counts, steps=1, seed=0, method=args.method)  # warm-up
        t0 = time.perf_counter()
        sampler.sample(counts, steps=args.sample_steps, seed=0, method=args.method)
    else:
        run = train_steps(proc, random_batch(64, 0, "cpu"), 2)
        run()  # warm-up
        run = train_steps(proc, random_batch(64, 0, "cpu"), args.train_steps)
        t0 = time.perf_counter()
        run()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def source_tree(rev: str, tmp: Path) -> Path:
    """Directory holding the ``moldiff`` package of ``rev`` (``WORKTREE``: the repository itself)."""
    if rev == "WORKTREE":
        return ROOT
    dest = tmp / rev
    if not dest.exists():
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "moldiff"],
                                 capture_output=True, check=True).stdout
        tar_path = tmp / f"{rev}.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
    return dest


def parse_variant(text: str) -> tuple[str, str, bool]:
    """``NAME=REV[:malloc]`` -> (name, rev, malloc)."""
    name, sep, spec = text.partition("=")
    rev, _, flag = spec.partition(":")
    if not sep or not name or not rev or flag not in ("", "malloc"):
        raise argparse.ArgumentTypeError(f"--variant must be NAME=REV or NAME=REV:malloc, got {text!r}")
    return name, rev, flag == "malloc"


def revision_id(rev: str) -> str:
    """The commit a revision names (``WORKTREE``: HEAD plus whether the tree has local changes)."""
    git = ["git", "-C", str(ROOT)]
    if rev != "WORKTREE":
        return subprocess.run([*git, "rev-parse", rev], capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "moldiff"], capture_output=True, text=True).stdout
    return head + ("+local changes" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", type=parse_variant, default=[], help="NAME=REV[:malloc]")
    ap.add_argument("--workloads", nargs="+", default=["sample", "train"], choices=["sample", "train", "cli"])
    ap.add_argument("--config", default="small", help="edm, small or a YAML path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sample-num", type=int, default=100)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--method", default="dpm2sde")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_revisions_cpu.json")
    ap.add_argument("--child", choices=["sample", "train"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return {}
    if not args.variant:
        ap.error("give at least one --variant NAME=REV[:malloc]")
    from tqdm import tqdm

    common = ["--config", args.config, "--threads", str(args.threads), "--sample-num", str(args.sample_num),
              "--sample-steps", str(args.sample_steps), "--method", args.method,
              "--train-steps", str(args.train_steps)]
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {name: source_tree(rev, Path(tmp)) for name, rev, _ in args.variant}
        jobs = [(w, name, malloc) for _ in range(args.rounds) for w in args.workloads
                for name, _, malloc in args.variant]
        for workload, name, malloc in tqdm(jobs, desc="runs"):
            env = dict(os.environ, PYTHONPATH=str(trees[name]), MOLDIFF_TUNE_MALLOC="1" if malloc else "0")
            if workload == "cli":
                cmd = [sys.executable, "-m", "moldiff.cli", "sample", "--model", "qm9", "--num",
                       str(args.sample_num), "--seed", "0", "--out", str(Path(tmp) / "cli.sdf")]
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=tmp)
                seconds = time.perf_counter() - t0
            else:
                out = subprocess.run([sys.executable, __file__, "--child", workload, *common], env=env,
                                     capture_output=True, text=True, check=True, cwd=tmp).stdout
                seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
            times.setdefault((workload, name), []).append(seconds)
    spec = {name: (revision_id(rev), malloc) for name, rev, malloc in args.variant}
    rows = []
    for (workload, name), ts in times.items():
        count = 64 * args.train_steps if workload == "train" else args.sample_num
        med = statistics.median(ts)
        rows.append({"workload": workload, "variant": name, "revision": spec[name][0], "malloc_tuning": spec[name][1],
                     "seconds": med, "mol_per_s": count / med, "times": ts})
        print(f"{workload:6s} {name:24s} {med:8.3f} s  {count / med:8.1f} mol/s  {[round(t, 2) for t in ts]}")
    sys.path.insert(0, COMMON)
    from _common import machine, write_json  # after the children, keeps the parent light

    result = {"machine": machine("cpu", args.threads), "config": args.config,
              "sample": {"num": args.sample_num, "steps": args.sample_steps, "method": args.method},
              "train": {"batch_size": 64, "steps": args.train_steps}, "rounds": args.rounds, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
