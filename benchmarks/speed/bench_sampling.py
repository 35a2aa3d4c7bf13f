"""Sampling speed (molecules/s) per step count, batch size and sampler, with before/after rows.

    .venv/bin/python benchmarks/speed/bench_sampling.py [--device cpu|cuda] [--threads 1]
        [--configs edm small] [--batch-sizes 16 64 256] [--steps 25 50 100 1000] [--repeat 3]
        [--precision fp32 [bf16]]

Random weights (speed does not depend on them) for the EDM configuration (9 x 256,
``configs/qm9_uncond.yaml``) and the shipped one (``configs/qm9_cpu_small.yaml``); atom counts
drawn from QM9's train histogram (``data/qm9/stats.json``, else EDM's). Every figure is the
median of ``--repeat`` runs (the machine may be shared). Runs predicted to take longer than
``--max-run-seconds`` are extrapolated from the largest measured step count of the same batch
(time is linear in the number of network calls, ``steps + 1``) and flagged ``"extrapolated"``.
Method and optimisation rows (``--opt-batch-size`` 64, ``--opt-steps`` 10; variants timed in
alternating rounds so that load drift hits all alike): every sampler;
``node_projection`` off/on; ``torch.compile`` (first-call time reported apart). ``--precision``
(``model.precision``: ``fp32``, ``bf16`` or both, interleaved) sets the denoiser's precision for
every row, and each row records it; bf16 autocast works on CPU and CUDA. Writes
``benchmarks/results/bench_sampling_<device>.json``. Shared helpers (random processes, timing,
machine info): ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from moldiff.config import ExperimentConfig
from moldiff.runtime import tune_cpu_allocator
from moldiff.sampling.sampler import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import (  # noqa: E402
    RESULTS,
    atom_counts,
    build_variants,
    interleaved,
    load_config,
    machine,
    qm9_histogram,
    random_process,
    timed,
    write_json,
)


# ---------------------------------------------------------------------- measurements
def sample_run(proc, counts: torch.Tensor, steps: int, method: str, device: str):
    """One sampling call (closure for :func:`timed`).

    This times the sampler core (:meth:`~moldiff.sampling.sampler.Sampler.sample`: one batch of
    exactly ``counts``) on a process with random weights, not the public API: there is no trained
    checkpoint, vocabulary or ``p(N)`` to load (speed does not depend on them), and the rows measure
    one batch of a given size, which ``MolDiff.sample_raw``'s automatic batching would regroup.
    Quality benchmarks (``benchmarks/quality/``) sample through ``moldiff.load_model`` instead.
    """
    sampler = Sampler(proc)

    def run() -> None:
        sampler.sample(counts, steps=steps, seed=0, method=method, device=device)
    return run


def step_rows(args, name: str, proc) -> list[dict[str, Any]]:
    """molecules/s per batch size and step count (ancestral), measured or extrapolated."""
    rows = []
    precision = proc.denoiser.precision
    for bs in args.batch_sizes:
        counts = atom_counts(bs, seed=bs)
        base_steps = min(args.steps)
        sample_run(proc, counts, 2, "ancestral", args.device)()  # warm-up
        t_base, all_base = timed(sample_run(proc, counts, base_steps, "ancestral", args.device), args.repeat,
                                 args.device)
        per_call, per_call_from = t_base / (base_steps + 1), base_steps
        for steps in args.steps:
            if steps == base_steps:
                t, times, kind = t_base, all_base, "measured"
            elif per_call * (steps + 1) * args.repeat <= args.max_run_seconds:
                t, times = timed(sample_run(proc, counts, steps, "ancestral", args.device), args.repeat,
                                 args.device)
                kind, per_call, per_call_from = "measured", t / (steps + 1), steps
            else:
                t, times, kind = per_call * (steps + 1), [], f"extrapolated from {per_call_from} steps"
            rows.append({"config": name, "precision": precision, "batch_size": bs, "atoms": int(counts.sum()),
                         "steps": steps, "method": "ancestral", "seconds": t, "mol_per_s": bs / t, "kind": kind,
                         "times": times})
            print(f"{name:6s} {precision} batch {bs:4d} steps {steps:5d}: {bs / t:9.2f} mol/s  ({t:.2f} s, {kind})")
    return rows


def method_rows(args, name: str, proc, bs: int = 64, steps: int = 10) -> list[dict[str, Any]]:
    """Same batch and steps for every registered sampler, alternating (one network call per step)."""
    from moldiff.sampling.sampler import SAMPLERS

    counts = atom_counts(bs, seed=bs)
    fns = {m: sample_run(proc, counts, steps, m, args.device) for m in SAMPLERS}
    rows = []
    precision = proc.denoiser.precision
    for method, (t, times) in interleaved(fns, args.repeat, args.device).items():
        rows.append({"config": name, "precision": precision, "batch_size": bs, "steps": steps, "method": method,
                     "seconds": t, "mol_per_s": bs / t, "times": times})
        print(f"{name:6s} {precision} {method:9s} batch {bs} steps {steps}: {bs / t:8.2f} mol/s")
    return rows


def optimisation_rows(args, name: str, config: ExperimentConfig, bs: int = 64, steps: int = 10) -> list[dict]:
    """Before/after rows, timed in alternating rounds: node_projection, torch.compile, per precision."""
    counts = atom_counts(bs, seed=bs)
    rows: list[dict[str, Any]] = []
    variants, compile_labels, err = build_variants(args, config)
    first: dict[str, float] = {}
    for label in list(variants):
        proc = variants[label][0]
        t0 = time.perf_counter()
        try:
            sample_run(proc, counts, 2, "ancestral", args.device)()  # warm-up (compiles)
            sample_run(proc, counts, 2, "ancestral", args.device)()
        except Exception as exc:  # noqa: BLE001 - e.g. a compiler failing at the first call
            err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            del variants[label]
        first[label] = time.perf_counter() - t0
    for label in compile_labels:
        if label not in variants:
            rows.append({"config": name, "what": label, "status": f"failed: {err}"})
            print(f"{name:6s} {label} failed: {err}")
    fns = {k: sample_run(p, counts, steps, "ancestral", args.device) for k, (p, _) in variants.items()}
    for label, (t, times) in interleaved(fns, args.repeat, args.device).items():
        rows.append({"config": name, "what": label, "precision": variants[label][1], "batch_size": bs,
                     "steps": steps, "seconds": t, "mol_per_s": bs / t, "times": times, "warmup_s": first[label]})
        print(f"{name:6s} {label:34s}: {bs / t:8.2f} mol/s  {[round(x, 1) for x in times]}")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--configs", nargs="+", default=["small", "edm"], help="edm, small or YAML paths")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 1000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-run-seconds", type=float, default=60.0)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--opt-batch-size", type=int, default=64, help="batch of the method/optimisation rows")
    ap.add_argument("--opt-steps", type=int, default=10, help="steps of the method/optimisation rows")
    ap.add_argument("--skip-methods", action="store_true")
    ap.add_argument("--skip-optimisations", action="store_true")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="model.precision of every row (several: each, before/after rows interleaved)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tune_cpu_allocator()  # as the CLI does; MOLDIFF_TUNE_MALLOC=0 measures without it
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine(args.device, args.threads), "histogram": qm9_histogram()[1],
                              "precision": args.precision,
                              "steps": [], "methods": [], "optimisations": []}
    for name in args.configs:
        config = load_config(name)
        print(f"== {name}: {config.model.n_layers} x {config.model.hidden_nf}")
        for precision in args.precision:
            proc = random_process(config, args.device, precision=precision)
            result["steps"] += step_rows(args, name, proc)
            if not args.skip_methods:
                result["methods"] += method_rows(args, name, proc, args.opt_batch_size, args.opt_steps)
        if not args.skip_optimisations:
            result["optimisations"] += optimisation_rows(args, name, config, args.opt_batch_size,
                                                         args.opt_steps)
    write_json(args.out or RESULTS / f"bench_sampling_{args.device}.json", result)
    return result


if __name__ == "__main__":
    main()
