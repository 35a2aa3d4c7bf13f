"""Sampling speed (molecules/s) per step count, batch size and sampler, with before/after rows.

    .venv/bin/python benchmarks/bench_sampling.py [--device cpu|cuda] [--threads 1]
        [--configs edm small] [--batch-sizes 16 64 256] [--steps 25 50 100 1000] [--repeat 3]

Random weights (speed does not depend on them) for the EDM configuration (9 x 256,
``configs/qm9_uncond.yaml``) and the shipped one (``configs/qm9_cpu_small.yaml``); atom counts
drawn from QM9's train histogram (``data/qm9/stats.json``, else EDM's). Every figure is the
median of ``--repeat`` runs (the machine may be shared). Runs predicted to take longer than
``--max-run-seconds`` are extrapolated from the largest measured step count of the same batch
(time is linear in the number of network calls, ``steps + 1``) and flagged ``"extrapolated"``.
Method and optimisation rows (``--opt-batch-size`` 64, ``--opt-steps`` 10; variants timed in
alternating rounds so that load drift hits all alike): every sampler;
``node_projection`` off/on; ``torch.compile`` (first-call time reported apart); bf16 autocast
(CUDA only). Writes ``benchmarks/results/bench_sampling_<device>.json``.

The helpers here are shared with ``bench_training.py`` and ``steps_vs_quality.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from moldiff.config import ExperimentConfig
from moldiff.pipeline import build_process
from moldiff.sampling.priors import NodeCountDistribution
from moldiff.sampling.sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {"edm": ROOT / "benchmarks/configs/qm9_uncond.yaml",
           "small": ROOT / "benchmarks/configs/qm9_cpu_small.yaml"}
#: EDM's QM9 train histogram (protocol section 3.4), used when data/qm9/stats.json is absent.
EDM_N_NODES = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644, 13: 3060, 15: 7796,
               25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136, 26: 48, 7: 16, 10: 362, 8: 49,
               9: 124, 27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}


# ---------------------------------------------------------------------- shared helpers
def qm9_histogram() -> tuple[dict[int, int], str]:
    """QM9 train atom-count histogram and where it came from."""
    path = ROOT / "data" / "qm9" / "stats.json"
    try:
        hist = json.loads(path.read_text())["splits"]["train"]["n_atoms_histogram"]
        return {int(k): int(v) for k, v in hist.items()}, str(path.relative_to(ROOT))
    except (OSError, KeyError, ValueError):
        return dict(EDM_N_NODES), "EDM configs/datasets_config.py"


def atom_counts(num: int, seed: int = 0) -> torch.Tensor:
    """``[num]`` atom counts drawn from QM9's train histogram."""
    return NodeCountDistribution(qm9_histogram()[0]).sample(num, torch.Generator().manual_seed(seed))


def load_config(name: str) -> ExperimentConfig:
    """``edm`` / ``small``, the stem of a YAML in ``benchmarks/configs`` or a YAML path."""
    named = ROOT / "benchmarks" / "configs" / f"{name}.yaml"
    return ExperimentConfig.load_yaml(CONFIGS.get(name) or (named if named.is_file() else name))


def set_node_projection(module: torch.nn.Module, flag: bool) -> None:
    """Switch the per-node split of the first edge-MLP layer on every EGNN layer."""
    for m in module.modules():
        if hasattr(m, "node_projection"):
            m.node_projection = flag


def random_process(config: ExperimentConfig, device: str, node_projection: bool = True, seed: int = 0):
    """A randomly initialised process for ``config`` (5 QM9 atom types), in eval mode on ``device``."""
    torch.manual_seed(seed)
    proc = build_process(config, num_classes=5).to(device).eval()
    set_node_projection(proc, node_projection)
    return proc


def sync(device: str) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeat: int, device: str) -> tuple[float, list[float]]:
    """Median and all wall times of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved(fns: dict[str, Any], repeat: int, device: str) -> dict[str, tuple[float, list[float]]]:
    """Time several variants in alternating rounds (A B C, A B C, ...): median and all times each.

    On a shared machine the load drifts; alternating puts every variant under the same drift, so
    before/after ratios are fairer than timing one variant after the other.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for label, fn in fns.items():
            times[label].append(timed(fn, 1, device)[0])
    return {k: (statistics.median(v), v) for k, v in times.items()}


def compile_denoiser(proc) -> str | None:
    """``torch.compile`` the denoiser in place; returns an error message instead of raising."""
    try:
        proc.denoiser = torch.compile(proc.denoiser, dynamic=True)
        return None
    except Exception as exc:  # noqa: BLE001 - record any compiler failure honestly
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def machine(device: str, threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "device": device,
            "load_average": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    print(f"wrote {path}")


def autocast(device: str, dtype: str):
    """bf16 autocast context on CUDA, a null context otherwise."""
    if dtype == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------- measurements
def sample_run(proc, counts: torch.Tensor, steps: int, method: str, device: str, dtype: str = "fp32"):
    """One sampling call (closure for :func:`timed`)."""
    sampler = Sampler(proc)

    def run() -> None:
        with autocast(device, dtype):
            sampler.sample(counts, steps=steps, seed=0, method=method, device=device)
    return run


def step_rows(args, name: str, proc) -> list[dict[str, Any]]:
    """molecules/s per batch size and step count (ancestral), measured or extrapolated."""
    rows = []
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
            rows.append({"config": name, "batch_size": bs, "atoms": int(counts.sum()), "steps": steps,
                         "method": "ancestral", "seconds": t, "mol_per_s": bs / t, "kind": kind,
                         "times": times})
            print(f"{name:6s} batch {bs:4d} steps {steps:5d}: {bs / t:9.2f} mol/s  ({t:.2f} s, {kind})")
    return rows


def method_rows(args, name: str, proc, bs: int = 64, steps: int = 10) -> list[dict[str, Any]]:
    """Same batch and steps for every registered sampler, alternating (one network call per step)."""
    from moldiff.sampling.sampler import SAMPLERS

    counts = atom_counts(bs, seed=bs)
    fns = {m: sample_run(proc, counts, steps, m, args.device) for m in SAMPLERS}
    rows = []
    for method, (t, times) in interleaved(fns, args.repeat, args.device).items():
        rows.append({"config": name, "batch_size": bs, "steps": steps, "method": method, "seconds": t,
                     "mol_per_s": bs / t, "times": times})
        print(f"{name:6s} {method:9s} batch {bs} steps {steps}: {bs / t:8.2f} mol/s")
    return rows


def optimisation_rows(args, name: str, config: ExperimentConfig, bs: int = 64, steps: int = 10) -> list[dict]:
    """Before/after rows, timed in alternating rounds: node_projection, torch.compile, bf16 autocast."""
    counts = atom_counts(bs, seed=bs)
    variants: dict[str, tuple[Any, str]] = {
        "node_projection=False": (random_process(config, args.device, False), "fp32"),
        "node_projection=True": (random_process(config, args.device, True), "fp32"),
    }
    rows: list[dict[str, Any]] = []
    if args.device.startswith("cuda"):
        variants["bf16 autocast"] = (random_process(config, args.device, True), "bf16")
    else:
        rows.append({"config": name, "what": "bf16 autocast", "status": "pending (CUDA only)"})
    if args.compile:
        proc = random_process(config, args.device, True)
        err = compile_denoiser(proc)
        if err is None:
            variants["torch.compile(dynamic=True)"] = (proc, "fp32")
    first: dict[str, float] = {}
    for label in list(variants):
        proc, dtype = variants[label]
        t0 = time.perf_counter()
        try:
            sample_run(proc, counts, 2, "ancestral", args.device, dtype)()  # warm-up (compiles)
            sample_run(proc, counts, 2, "ancestral", args.device, dtype)()
        except Exception as exc:  # noqa: BLE001 - e.g. a compiler failing at the first call
            err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            del variants[label]
        first[label] = time.perf_counter() - t0
    if args.compile and "torch.compile(dynamic=True)" not in variants:
        rows.append({"config": name, "what": "torch.compile(dynamic=True)", "status": f"failed: {err}"})
        print(f"{name:6s} torch.compile failed: {err}")
    fns = {k: sample_run(p, counts, steps, "ancestral", args.device, d) for k, (p, d) in variants.items()}
    for label, (t, times) in interleaved(fns, args.repeat, args.device).items():
        rows.append({"config": name, "what": label, "batch_size": bs, "steps": steps, "seconds": t,
                     "mol_per_s": bs / t, "times": times, "warmup_s": first[label]})
        print(f"{name:6s} {label:28s}: {bs / t:8.2f} mol/s  {[round(x, 1) for x in times]}")
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
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine(args.device, args.threads), "histogram": qm9_histogram()[1],
                              "steps": [], "methods": [], "optimisations": []}
    for name in args.configs:
        config = load_config(name)
        print(f"== {name}: {config.model.n_layers} x {config.model.hidden_nf}")
        proc = random_process(config, args.device)
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
