"""Sample quality and time per sampler and step count (EDM metrics).

    .venv/bin/python benchmarks/quality/steps_vs_quality.py --model qm9 --num 500 \\
        --steps 25 50 100 250 1000 --samplers ancestral ddim dpm2 dpm2sde [--device cpu] [--threads 2]

``--model`` is a shipped model name or any checkpoint path; ``--samplers`` takes registered names
and ``ddim@ETA`` (DDIM with that ``eta``; ``ddim@1`` equals ancestral). Molecules are sampled with
the public API, :meth:`moldiff.MolDiff.sample_raw` with a :class:`~moldiff.sampling.config.SamplingConfig`
(``--max-atoms`` per batch), so they pass the same checks (and, for a conditional model, the same
``p(c | N)`` conditioning) as users' samples. The same
``--num`` atom counts (drawn once from the model's ``p(N)``) and the same seed are used for every
row, so rows differ only by sampler and step count. Each row is scored with
:func:`moldiff.evaluation.evaluate_molecules` (atom / molecule stability, validity, uniqueness,
novelty against ``data/qm9/train_smiles.txt.gz`` when present) and timed (sampling only).
Writes ``benchmarks/results/steps_vs_quality_<model>.json``, ``.md`` (a markdown table) and ``.png``
(quality against steps per sampler, with EDM's published 1,000-step figures as dashed lines).
``--merge A.json B.json ... --out C.json`` joins the rows of runs made side by side (e.g. one
process per sampler) and writes the three files, without sampling.

Smoke test on a tiny random checkpoint (seconds)::

    .venv/bin/python benchmarks/quality/steps_vs_quality.py --make-random-checkpoint /tmp/tiny.pt
    .venv/bin/python benchmarks/quality/steps_vs_quality.py --model /tmp/tiny.pt --num 8 --steps 5 10 \\
        --out /tmp/svq.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import moldiff
from moldiff.checkpoint import save_checkpoint
from moldiff.evaluation import evaluate_molecules, load_reference_smiles
from moldiff.runtime import tune_cpu_allocator
from moldiff.sampling.config import SamplingConfig
from moldiff.sampling.sampler import DEFAULT_MAX_ATOMS_PER_BATCH, SAMPLERS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import RESULTS, ROOT, load_config, machine, qm9_histogram, write_json  # noqa: E402

REFERENCE = ROOT / "data" / "qm9" / "train_smiles.txt.gz"
COLUMNS = ("atom_stability", "mol_stability", "validity", "uniqueness", "novelty")
#: EDM's published QM9 figures (Hoogeboom et al. 2022, Table 1; 1,000 steps, %).
EDM_PUBLISHED = {"atom_stability": 98.7, "mol_stability": 82.0, "validity": 91.9}


def make_random_checkpoint(path: str | Path, config: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised checkpoint in the trainer's format (for smoke tests)."""
    cfg = load_config(config if "/" in config else str(ROOT / "benchmarks" / "configs" / f"{config}.yaml"))
    torch.manual_seed(seed)
    proc = moldiff.build_process(cfg, num_classes=5)
    hist, _ = qm9_histogram()
    stats = {"elements": ["H", "C", "N", "O", "F"], "n_atoms_hist": hist, "max_n_atoms": max(hist),
             "context_nf": 0, "conditioning": []}
    save_checkpoint(path, {"config": cfg.to_dict(), "stats": stats, "model": proc.state_dict(),
                           "ema": proc.state_dict()})
    return Path(path)


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """A markdown table of the rows."""
    cols = " | ".join(c.replace("_", " ") + " (%)" for c in COLUMNS)
    head = f"| sampler | steps | {cols} | s | mol/s |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in rows:
        vals = " | ".join("–" if r.get(c) is None else f"{100 * r[c]:.1f}" for c in COLUMNS)
        timing = f"{r['seconds']:.1f} | {r['mol_per_s']:.2f}"
        lines.append(f"| {r['sampler']} | {r['steps']} | {vals} | {timing} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], png: Path, title: str) -> None:
    """Atom / molecule stability and validity against steps (log scale), one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(EDM_PUBLISHED), figsize=(4.2 * len(EDM_PUBLISHED), 3.6), sharex=True)
    for ax, (col, edm) in zip(axes, EDM_PUBLISHED.items(), strict=True):
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r["steps"], 100 * r[col]) for r in rows if r["sampler"] == sampler and r.get(col) is not None)
            ax.plot(*zip(*pts, strict=True), marker="o", label=sampler)
        ax.axhline(edm, ls="--", c="gray", lw=1, label="EDM, 1,000 steps (published)")
        ax.set(xscale="log", xlabel="steps", ylabel=f"{col.replace('_', ' ')} (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    """``out`` (JSON) plus the ``.md`` table and the ``.png`` plot next to it."""
    write_json(out, result)
    name = Path(result["model"]).stem
    title = f"Steps vs quality: model {name}, {result['num']} molecules, seed {result['seed']}"
    md = Path(out).with_suffix(".md")
    md.write_text(markdown(result["rows"], title))
    plot(result["rows"], Path(out).with_suffix(".png"), title)
    print(md.read_text())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qm9", help="shipped model name or checkpoint path")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 250, 1000])
    ap.add_argument("--samplers", nargs="+", default=["ancestral", "ddim", "dpm2", "dpm2sde"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS_PER_BATCH, help="atoms per batch")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (the .md goes next to it)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the denoiser (faster long runs; the first call compiles and is timed)")
    ap.add_argument("--make-random-checkpoint", type=Path, default=None, metavar="PATH",
                    help="only write a random tiny checkpoint to PATH and exit")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="only join the rows of these result files into --out (.json, .md, .png)")
    args = ap.parse_args(argv)
    if args.merge:
        import json

        parts = [json.loads(p.read_text()) for p in args.merge]
        if len({(p["model"], p["num"], p["seed"]) for p in parts}) != 1:
            raise SystemExit("--merge: the files differ in model, --num or --seed")
        result = {**parts[0], "rows": [r for p in parts for r in p["rows"]],
                  "merged_from": [str(p) for p in args.merge]}
        write_outputs(args.out or RESULTS / f"steps_vs_quality_{Path(result['model']).stem}.json", result)
        return result["rows"]
    tune_cpu_allocator()  # as the CLI does; MOLDIFF_TUNE_MALLOC=0 measures without it
    if args.make_random_checkpoint is not None:
        print(f"wrote {make_random_checkpoint(args.make_random_checkpoint)}")
        return []
    if args.threads:
        torch.set_num_threads(args.threads)
    model = moldiff.load_model(args.model, device=args.device)
    if args.compile:
        model.process.denoiser.compile(dynamic=True)
    bad = sorted({name.split("@")[0] for name in args.samplers} - set(SAMPLERS))
    if bad:
        raise SystemExit(f"unknown sampler(s) {bad}; allowed: {list(SAMPLERS)} (ddim@ETA sets eta)")
    counts = model.node_distribution.sample(args.num, torch.Generator().manual_seed(args.seed)).tolist()
    reference = load_reference_smiles(REFERENCE) if REFERENCE.is_file() else None
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            method, _, eta = sampler.partition("@")
            t0 = time.perf_counter()
            config = SamplingConfig(method=method, steps=steps, eta=float(eta or 0.0), seed=args.seed,
                                    max_atoms_per_batch=args.max_atoms)
            mols = model.sample_raw(args.num, num_atoms=counts, config=config, device=args.device)
            seconds = time.perf_counter() - t0
            _, summary = evaluate_molecules(mols, reference_smiles=reference)
            row = {"sampler": sampler, "steps": steps, "num": args.num, "seconds": seconds,
                   "mol_per_s": args.num / seconds, **{c: summary.get(c) for c in COLUMNS}}
            rows.append(row)
            print(f"{sampler:9s} {steps:5d} steps: atom {100 * row['atom_stability']:.1f}%  "
                  f"mol {100 * row['mol_stability']:.1f}%  valid {100 * row['validity']:.1f}%  "
                  f"{seconds:.1f} s")
    out = args.out or RESULTS / f"steps_vs_quality_{Path(args.model).stem}.json"
    write_outputs(out, {"model": args.model, "num": args.num, "seed": args.seed,
                        "machine": machine(args.device, torch.get_num_threads()), "compile": args.compile,
                        "rows": rows})
    return rows


if __name__ == "__main__":
    main()
