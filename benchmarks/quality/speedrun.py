"""CPU speedrun: quality reached per molecule pass (and per hour) by a training recipe.

    # train a recipe for a fixed budget of molecule passes (resumable), then sample and score
    .venv/bin/python benchmarks/quality/speedrun.py run --name x0_snr --passes 150000 \\
        --set diffusion.parameterization=x0 --set diffusion.loss_weighting=snr_clamp [--seed 0] \\
        [--eval-at 50000 100000] [--num-samples 500] [--config benchmarks/configs/speedrun_base.yaml]
    # training throughput of several recipes side by side (alternating rounds, one process)
    .venv/bin/python benchmarks/quality/speedrun.py throughput --variant eps= \\
        --variant x0_snr=diffusion.parameterization=x0,diffusion.loss_weighting=snr_clamp [--out FILE.json]
    # score a checkpoint of a longer run (e.g. the next shipped model's) as a row
    .venv/bin/python benchmarks/quality/speedrun.py evaluate --name qm9_v2 --checkpoint runs/qm9_v2/last.pt
    # table + plot of every row so far
    .venv/bin/python benchmarks/quality/speedrun.py report

``run`` trains ``--config`` (the shipped recipe by default) plus ``--set`` overrides through the
public training entry point (:func:`moldiff.training.run.run_training`) in ``runs/speedrun/<name>-s<seed>``
until ``--passes`` molecules have been seen (the budget counts molecule passes, not minutes, so
that a noisy shared machine cannot change what a row means; the wall time is recorded beside it).
A rerun continues from the run's last checkpoint. At every budget in ``--eval-at`` and at the
end it samples ``--num-samples`` molecules from the EMA weights through the public API
(:func:`moldiff.load_model`, ``dpm2sde`` at 100 steps unless ``--sampler``/``--steps``) and scores
them with the EDM evaluator. Each evaluation appends one JSON row to
``benchmarks/results/speedrun_cpu.jsonl`` (a later row with the same name, seed and budget
replaces an earlier one in the report).

``throughput`` measures training molecules/s of each variant in one process, variants alternating
round by round on the same batches, so that rows can be compared per hour as well as per pass.
``report`` writes ``speedrun_cpu.md`` (table) and ``speedrun_cpu.png`` (quality against molecule
passes, with EDM's and VEDA's published lines).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from moldiff.config import ExperimentConfig
from moldiff.runtime import tune_cpu_allocator

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
ROWS = RESULTS / "speedrun_cpu.jsonl"
BASE = ROOT / "benchmarks" / "configs" / "speedrun_base.yaml"
#: Published 1,000-molecule figures (atom stability, molecule stability, validity), in %.
PUBLISHED = {"EDM (1000 steps)": (98.7, 82.0, 91.9), "VEDA-E (50 steps)": (99.4, 93.7, 98.1)}


def parse_value(text: str) -> Any:
    """``"1e-4"`` -> float, ``"true"`` -> bool, ``"[1,2]"`` -> list, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return float(text)
        except ValueError:
            return text


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (unknown keys raise ``ValueError``)."""
    sections: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"override must look like section.key=value, got {item!r}")
        sections.setdefault(section, {})[name] = parse_value(value)
    return config.override(**sections) if sections else config


def machine() -> dict[str, Any]:
    """Where and when a row was measured."""
    return {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def run_dir(name: str, seed: int) -> Path:
    """Training directory of a speedrun row."""
    return ROOT / "runs" / "speedrun" / f"{name}-s{seed}"


def train_to(config: ExperimentConfig, out: Path, passes: int) -> dict[str, Any]:
    """Train (or continue) until ``passes`` molecule passes; returns the trainer's counters."""
    from moldiff.training.run import run_training

    steps = math.ceil(passes / config.train.batch_size)
    cfg = config.override(train={"max_steps": steps, "max_minutes": None})
    state = run_training(cfg, out, resume=(out / "last.pt").is_file(), progress=False)
    return vars(state)


def evaluate_checkpoint(path: Path, num: int, sampler: str, steps: int, seed: int,
                        spacing: str = "uniform", churn: float = 0.0, churn_range: tuple[float, float] | None = None,
                        final: str = "sample") -> dict[str, Any]:
    """Sample ``num`` molecules (EMA weights) and return the EDM summary plus the sampling time.

    The sampler-side options (``spacing``, ``churn``, ``churn_range``, ``final``; see
    :class:`~moldiff.sampling.config.SamplingConfig`) are recorded in the row when not the default.
    """
    import moldiff
    from moldiff.evaluation.report import jsonable
    from moldiff.sampling.config import SamplingConfig

    model = moldiff.load_model(str(path))
    config = SamplingConfig(method=sampler, steps=steps, seed=seed, spacing=spacing, churn=churn,
                            churn_range=churn_range, final=final)
    t0 = time.perf_counter()
    if model.has_bonds:  # also scored by the model's own bonds (labelled *_own_bonds; the headline stays EDM's)
        from moldiff.constants import BOND_ORDERS
        from moldiff.io import Molecule

        raw = [Molecule(name="", symbols=sym, pos=pos, bonds=[(i, j, BOND_ORDERS[c]) for i, j, c in bonds])
               for _, batch in model.iter_samples(num, config=config, with_bonds=True)
               for sym, pos, bonds in batch]
    else:
        raw = model.sample_raw(num, config=config)
    sample_s = time.perf_counter() - t0
    _, summary = moldiff.evaluate_molecules(raw)
    out = {**jsonable(summary), "sample_s": round(sample_s, 1), "sampler": sampler, "steps": steps}
    if spacing != "uniform":
        out["spacing"] = spacing
    if config.churn:
        out["churn"] = config.churn
    if config.churn_range is not None:
        out["churn_range"] = list(config.churn_range)
    if final != "sample":
        out["final"] = final
    return out


def log_throughput(out: Path) -> float | None:
    """Mean logged training molecules/s of a run (``log.csv``)."""
    import pandas as pd

    log = out / "log.csv"
    if not log.is_file():
        return None
    v = pd.to_numeric(pd.read_csv(log).get("mol_per_s"), errors="coerce").dropna()
    return float(v.mean()) if len(v) else None


def append_row(row: dict[str, Any], path: Path = ROWS) -> None:
    """Append one JSON row to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def cmd_run(args: argparse.Namespace) -> None:
    """Train to each budget in turn, evaluating at each."""
    config = apply_overrides(ExperimentConfig.load_yaml(args.config), args.set or [])
    config = config.override(train={"seed": args.seed, "num_threads": args.threads})
    out = Path(args.run_dir) if args.run_dir else run_dir(args.name, args.seed)
    budgets = sorted({*args.eval_at, args.passes})
    for passes in budgets:
        state = train_to(config, out, passes)
        seen = state["step"] * config.train.batch_size
        row = {"name": args.name, "overrides": args.set or [], "seed": args.seed, "budget_passes": passes,
               "passes": seen, "epochs": round(seen / 100_000, 3), "train_s": round(state["elapsed_s"], 1),
               "log_mol_per_s": log_throughput(out), "val_nll_best": state["best_val_nll"],
               "config": str(Path(args.config).resolve().relative_to(ROOT)), **machine()}
        row.update(evaluate_checkpoint(out / "last.pt", args.num_samples, args.sampler, args.steps, args.seed))
        append_row(row, Path(args.rows))
        pct = {k: "-" if row.get(k) is None else f"{100 * row[k]:.1f} %"
               for k in ("atom_stability", "mol_stability", "validity", "uniqueness")}
        print(f"{args.name} s{args.seed} @ {seen:,} passes ({row['train_s']:.0f} s): atom {pct['atom_stability']}, "
              f"mol {pct['mol_stability']}, valid {pct['validity']}, unique {pct['uniqueness']}", flush=True)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Score a checkpoint of a longer run (e.g. the shipped model's run) as a row of the table."""
    from moldiff.checkpoint import load_checkpoint

    payload = load_checkpoint(args.checkpoint)
    state = payload.get("state") or payload.get("info", {}).get("train_state", {})
    config = ExperimentConfig.from_dict(payload["config"])
    seen = args.passes if args.passes is not None else int(state.get("step", 0)) * config.train.batch_size
    row = {"name": args.name, "overrides": [f"checkpoint={args.checkpoint}"], "seed": args.seed,
           "budget_passes": seen, "passes": seen, "epochs": round(seen / 100_000, 3),
           "train_s": round(float(state.get("elapsed_s", float("nan"))), 1), "log_mol_per_s": None,
           "val_nll_best": float(state.get("best_val_nll", float("inf"))), "config": args.checkpoint, **machine()}
    row.update(evaluate_checkpoint(Path(args.checkpoint), args.num_samples, args.sampler, args.steps, args.seed,
                                   args.spacing, args.churn, _time_range(args.churn_range), args.final))
    append_row(row, Path(args.rows))
    print(f"{args.name} @ {seen:,} passes: atom {100 * row['atom_stability']:.1f} %, mol "
          f"{100 * row['mol_stability']:.1f} %, valid {100 * row['validity']:.1f} %", flush=True)


def _time_range(text: str | None) -> tuple[float, float] | None:
    """``--churn-range LO,HI`` -> ``(lo, hi)`` (``SamplingConfig`` checks the values)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"--churn-range expects LO,HI, got {text!r}")
    return float(parts[0]), float(parts[1])


def cmd_throughput(args: argparse.Namespace) -> None:
    """Training molecules/s per variant, alternating variants round by round on the same batches."""
    from moldiff.data.datasets import load_dataset
    from moldiff.data.loader import MolLoader
    from moldiff.data.splits import get_split
    from moldiff.geometry import noise_aligner
    from moldiff.models import build_model
    from moldiff.training.trainer import GradClipper

    torch.set_num_threads(args.threads)
    base = ExperimentConfig.load_yaml(args.config)
    arrays = load_dataset("qm9")
    rows = get_split("train", "qm9")[:4096]
    variants = {}
    for spec in args.variant:
        name, _, over = spec.partition("=")
        cfg = apply_overrides(base, [o for o in over.split(",") if o])
        loader = MolLoader(arrays, rows, batch_size=cfg.train.batch_size, shuffle=True, seed=0)
        proc = build_model(cfg, len(loader.elements))
        if cfg.train.compile:
            proc.denoiser.compile(dynamic=True)
        opt = torch.optim.AdamW(proc.parameters(), lr=cfg.train.lr, amsgrad=True)
        variants[name] = (cfg, proc, opt, GradClipper(), loader)
    results: dict[str, list[float]] = {k: [] for k in variants}
    gen = torch.Generator().manual_seed(0)
    for rnd in range(args.rounds + 1):  # round 0 warms up (compilation)
        for name, (cfg, proc, opt, clip, loader) in variants.items():
            align = noise_aligner(cfg.train.align_noise)  # as the trainer does (None: the loss as before)
            proc.train()
            n, t0 = 0, time.perf_counter()
            for i, mb in enumerate(loader.iter_batches(rnd)):
                if i >= args.steps:
                    break
                loss = proc.loss(mb, generator=gen, noise_align=align).loss.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                clip([p for p in proc.parameters() if p.grad is not None])
                opt.step()
                n += mb.num_graphs
            if rnd > 0:
                results[name].append(n / (time.perf_counter() - t0))
    row = {"kind": "throughput", "steps_per_round": args.steps, "rounds": args.rounds, **machine(),
           "mol_per_s": {k: sorted(v)[len(v) // 2] for k, v in results.items()},
           "mol_per_s_rounds": results, "variants": args.variant}
    out = Path(args.out) if args.out else RESULTS / "speedrun_throughput_cpu.json"
    out.write_text(json.dumps(row, indent=1) + "\n")
    for k, v in row["mol_per_s"].items():
        print(f"{k:<24} {v:8.1f} molecules/s (median of {args.rounds})")


def sampling_label(row: dict) -> str:
    """``"1,000 x dpm2sde 50, quadratic, churn 0.4"``: how a row's molecules were sampled (older rows:
    500 x dpm2sde 100, uniform, the script's defaults then)."""
    text = f"{row.get('num_molecules', 500):,} x {row.get('sampler', 'dpm2sde')} {row.get('steps', 100)}"
    if row.get("spacing", "uniform") != "uniform":
        text += f", {row['spacing']}"
    if row.get("churn"):
        text += f", churn {row['churn']:g}"
    if row.get("final", "sample") != "sample":
        text += f", final {row['final']}"
    return text


def load_rows(path: Path = ROWS) -> list[dict[str, Any]]:
    """Rows of ``path``, later duplicates (name, seed, budget) replacing earlier ones."""
    if not path.is_file():
        return []
    rows: dict[tuple, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["name"], r["seed"], r["budget_passes"])] = r
    return list(rows.values())


def cmd_report(args: argparse.Namespace) -> None:
    """Markdown table and plot of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(load_rows(Path(args.rows)), key=lambda r: (r["budget_passes"], r["name"], r["seed"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| recipe | overrides | seed | passes | train min | sampling | atom stab. % | mol stab. % | valid % | "
             "valid & connected % | unique % | val NLL |", "|" + "---|" * 12]
    for r in rows:
        pct = (lambda k, r=r: f"{100 * r[k]:.1f}" if r.get(k) is not None else "-")
        lines.append(f"| {r['name']} | {' '.join(r['overrides']) or '(base)'} | {r['seed']} | {r['passes']:,} | "
                     f"{r['train_s'] / 60:.1f} | {sampling_label(r)} | {pct('atom_stability')} | "
                     f"{pct('mol_stability')} | "
                     f"{pct('validity')} | {pct('validity_connected')} | {pct('uniqueness')} | "
                     f"{r['val_nll_best']:.2f} |")
    (out / "speedrun_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    names = sorted({r["name"] for r in rows})
    legend_in = 0.15 * -(-(len(names) + len(PUBLISHED)) // 4) + 0.2  # 4 columns of 7-point entries
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5 + legend_in))
    colors = plt.get_cmap("tab20").colors
    for ax, key, idx, title in zip(axes, ("atom_stability", "mol_stability", "validity"), range(3),
                                   ("atom stability %", "molecule stability %", "validity %"), strict=True):
        for k, name in enumerate(names):
            pts = sorted((r["passes"], 100 * r[key]) for r in rows if r["name"] == name)
            ax.plot([p for p, _ in pts], [v for _, v in pts], "os^Dv<>"[k // 20 % 7] + "-", ms=5,
                    color=colors[k % 20], label=name)
        for j, (label, vals) in enumerate(PUBLISHED.items()):
            ax.axhline(vals[idx], ls="--", color=f"C{7 + j}", lw=1, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("molecule passes (training)")
        ax.set_title(title)
        ax.set_ylim(0, 100)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"CPU speedrun: {len(rows)} rows (samples and sampler of each row: speedrun_cpu.md)")
    fig.tight_layout(rect=(0, legend_in / (4.5 + legend_in), 1, 1))
    fig.savefig(out / "speedrun_cpu.png", dpi=100)
    plt.close(fig)
    print(f"wrote {out / 'speedrun_cpu.md'} and {out / 'speedrun_cpu.png'}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train a recipe to a budget, then sample and score")
    r.add_argument("--name", required=True)
    r.add_argument("--config", default=str(BASE))
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    r.add_argument("--passes", type=int, required=True, help="training budget in molecule passes")
    r.add_argument("--eval-at", type=int, nargs="*", default=[], help="earlier budgets to evaluate at")
    r.add_argument("--num-samples", type=int, default=500)
    r.add_argument("--sampler", default="dpm2sde")
    r.add_argument("--steps", type=int, default=100)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--rows", default=str(ROWS), help="JSON-lines file the rows are appended to")
    r.add_argument("--run-dir", help="training directory (default runs/speedrun/NAME-sSEED)")
    t = sub.add_parser("throughput", help="training molecules/s of variants side by side")
    t.add_argument("--config", default=str(BASE))
    t.add_argument("--variant", action="append", required=True, metavar="NAME=SECTION.KEY=VALUE,...")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", help="JSON file of the row (default benchmarks/results/speedrun_throughput_cpu.json)")
    e = sub.add_parser("evaluate", help="score a checkpoint of a longer run as a row")
    e.add_argument("--name", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--passes", type=int, help="molecule passes the weights have seen, when the checkpoint's step "
                   "count does not tell (e.g. a run that changed batch size or world size)")
    e.add_argument("--num-samples", type=int, default=1000)
    e.add_argument("--sampler", default="dpm2sde")
    e.add_argument("--steps", type=int, default=100)
    e.add_argument("--spacing", default="uniform", choices=("uniform", "quadratic", "logsnr"),
                   help="step spacing of the sampler (a sampler-side ablation)")
    e.add_argument("--churn", type=float, default=0.0,
                   help="noise injection before every step, 0 to sqrt(2)-1 (a sampler-side ablation)")
    e.add_argument("--churn-range", default=None, metavar="LO,HI",
                   help="normalised times t/T of the steps that get --churn (default: every step)")
    e.add_argument("--final", default="sample", choices=("sample", "mean"),
                   help="last step: sample p(x | z_0), or mean: the network's clean estimate (a sampler-side ablation)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--rows", default=str(ROWS))
    rep = sub.add_parser("report", help="table and plot of all rows")
    rep.add_argument("--rows", default=str(ROWS))
    rep.add_argument("--out", default=str(RESULTS), help="folder for speedrun_cpu.md and speedrun_cpu.png")
    args = p.parse_args(argv)
    tune_cpu_allocator()
    try:
        commands = {"run": cmd_run, "evaluate": cmd_evaluate, "throughput": cmd_throughput, "report": cmd_report}
        commands[args.cmd](args)
    except ValueError as exc:
        print(f"speedrun: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
