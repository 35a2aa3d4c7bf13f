"""End-to-end sampling throughput of a large run: the path `moldiff sample` takes, minus file writing.

    .venv/bin/python benchmarks/speed/bench_scale.py --model qm9 --num 10000 --steps 100 --sampler dpm2 --device cuda
    torchrun --standalone --nproc-per-node 4 benchmarks/speed/bench_scale.py -- --num 100000 --device cuda

Times :meth:`moldiff.pipeline.MolDiff.iter_samples` (``p(N)`` draw, atom-budget batches,
automatic batch size on CUDA, out-of-memory split-and-retry) for ``--num`` molecules, gathered in
order on rank 0 (:func:`moldiff.sampling.sharding.gather_in_order`) under ``torchrun``. One warm-up
batch of a few molecules is sampled first (CUDA context, allocator); it is not timed. Prints
molecules/s and writes ``benchmarks/results/bench_scale_<device>.json`` (``--out`` to change).
The goal of issue 5 is 10,000 QM9 molecules in under 60 s on one H100.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from moldiff.pipeline import load_model
from moldiff.runtime import tune_cpu_allocator
from moldiff.sampling.sampler import SAMPLERS
from moldiff.sampling.sharding import gather_in_order, init_sharding, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import RESULTS, machine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qm9", help="shipped model name or checkpoint path")
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sampler", default="ancestral", choices=SAMPLERS)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--batch-atoms", type=int, default=None, help="atom budget (default: automatic)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser (compiled in the warm-up)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tune_cpu_allocator()  # as the CLI does; MOLDIFF_TUNE_MALLOC=0 measures without it
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shard = init_sharding(device)
    model = load_model(args.model, device=device)
    if args.compile:
        model.process.denoiser.compile(dynamic=True)
    kw = dict(steps=args.steps, method=args.sampler, device=device, max_atoms_per_batch=args.batch_atoms)
    for _ in model.iter_samples(min(8, args.num), seed=args.seed + 1, **kw):  # warm-up, not timed
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    batches = model.iter_samples(args.num, seed=args.seed, rank=shard.rank, world_size=shard.world_size,
                                 progress=shard.is_main, **kw)
    n = sum(len(batch) for batch in gather_in_order(batches, shard))
    seconds = time.perf_counter() - t0
    if not shard.is_main:
        return
    row = {"model": args.model, "num": n, "steps": args.steps, "sampler": args.sampler,
           "world_size": shard.world_size, "seconds": seconds, "molecules_per_s": n / seconds,
           "batch_atoms": args.batch_atoms or "auto", "compile": args.compile}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"{n} molecules, {args.steps} {args.sampler} steps, {shard.world_size} process(es) on {device}: "
          f"{seconds:.1f} s = {n / seconds:.1f} molecules/s")
    out = args.out or RESULTS / f"bench_scale_{device.type}.json"
    write_json(out, {"machine": machine(str(device), torch.get_num_threads()), "rows": [row]})


if __name__ == "__main__":
    main()
