"""Training speed (molecules/s): forward + backward + EDM clipping + AdamW step, batch 64 of QM9 size.

    .venv/bin/python benchmarks/speed/bench_training.py [--device cpu|cuda] [--threads 1] [--configs small edm]
        [--batch-size 64] [--steps 5] [--repeat 3] [--precision fp32 [bf16]]

Random weights and random QM9-size molecules (atom counts from QM9's train histogram, atom types
from its element frequencies, positions ~ N(0, 1.5 Å) per axis): speed does not depend on the
values. The step is the trainer's (``process.loss`` in train mode, L2 objective, EDM's adaptive
gradient clipping, AdamW with amsgrad). Each figure is the median over ``--repeat`` windows of
``--steps`` optimiser steps, after 2 warm-up steps; the variants alternate window by window, so
load drift on a shared machine hits them alike. Before/after rows: ``node_projection`` off/on,
``torch.compile`` of the denoiser, each at every ``--precision`` (``model.precision``: ``fp32``,
``bf16`` or both; bf16 autocast works on CPU and CUDA; each row records its precision). Writes
``benchmarks/results/bench_training_<device>.json``. Shared helpers (random batches, the trainer-style
step, timing): ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from moldiff.runtime import tune_cpu_allocator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import (  # noqa: E402
    RESULTS,
    build_variants,
    interleaved,
    load_config,
    machine,
    qm9_histogram,
    random_batch,
    train_steps,
    write_json,
)


def config_rows(args, name: str) -> list[dict[str, Any]]:
    """Before/after rows of one configuration, timed in alternating rounds (fair under load drift)."""
    config = load_config(name)
    print(f"== {name}: {config.model.n_layers} x {config.model.hidden_nf}")
    mb = random_batch(args.batch_size, seed=1, device=args.device)
    rows: list[dict[str, Any]] = []
    variants, compile_labels, err = build_variants(args, config)
    fns, warm = {}, {}
    for label, (proc, _) in list(variants.items()):
        t0 = time.perf_counter()
        try:
            train_steps(proc, mb, 2)()  # warm-up (and compilation)
        except Exception as exc:  # noqa: BLE001 - e.g. a compiler failing at the first call
            err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            continue
        warm[label] = time.perf_counter() - t0
        fns[label] = train_steps(proc, mb, args.steps)
    for label in compile_labels:
        if label not in fns:
            rows.append({"config": name, "what": label, "status": f"failed: {err}"})
            print(f"{name:6s} {label} failed: {err}")
    for label, (t, times) in interleaved(fns, args.repeat, args.device).items():
        per_step = t / args.steps
        rows.append({"config": name, "what": label, "precision": variants[label][1], "batch_size": args.batch_size,
                     "atoms": int(mb.pos.shape[0]), "seconds_per_step": per_step,
                     "mol_per_s": args.batch_size / per_step, "warmup_2_steps_s": warm[label],
                     "window_times": times})
        print(f"{name:6s} {label:34s}: {args.batch_size / per_step:8.2f} mol/s  ({per_step:.3f} s/step)")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", nargs="+", default=["small", "edm"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="optimiser steps per timed window")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="model.precision of every row (several: each, before/after rows interleaved)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tune_cpu_allocator()  # as the CLI does; MOLDIFF_TUNE_MALLOC=0 measures without it
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    rows = [row for name in args.configs for row in config_rows(args, name)]
    result = {"machine": machine(args.device, args.threads), "histogram": qm9_histogram()[1],
              "precision": args.precision, "rows": rows}
    write_json(Path(args.out) if args.out else RESULTS / f"bench_training_{args.device}.json", result)
    return result


if __name__ == "__main__":
    main()
