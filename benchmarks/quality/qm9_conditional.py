"""EDM's conditional QM9 benchmark (Table 3) end to end: property classifiers, baselines, generators, MAE.

Protocol (shared/reference/edm_protocol.md §5): for each property, φ_c (invariant EGNN) is trained on
D_a (``first_half``) with valid-split mean/MAD; the conditional generator is trained on D_b
(``second_half``); ``(N, c)`` is drawn from D_b's binned joint, a molecule is sampled, and the MAE
between φ_c(molecule) and ``c`` is reported over all samples (no filtering). Baselines: Naive (φ_c on
D_b with permuted labels), #Atoms (MLP on N/29 trained on D_a), QM9 (φ_c on D_b, true labels).

    python benchmarks/quality/qm9_conditional.py --reduced            # CPU: minutes per property
    python benchmarks/quality/qm9_conditional.py                      # full protocol: GPU work (days)

``--reduced`` shrinks every stage (numbers below); the full run uses benchmarks/configs/qm9_cond_*.yaml,
a 7×128 classifier for 1000 epochs and 10,100 samples with 1000 steps, as EDM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from moldiff.checkpoint import load_checkpoint, save_checkpoint
from moldiff.conditioning import PROPERTIES, PROPERTY_NAMES, conditional_inputs
from moldiff.config import ExperimentConfig
from moldiff.data import get_split, load_dataset, property_mean_mad
from moldiff.evaluation.stability import stability_fractions
from moldiff.pipeline import PRETRAINED_DIR, from_checkpoint
from moldiff.sampling.config import SamplingConfig
from moldiff.sampling.priors import PropertyDistribution
from moldiff.training.property import (
    fit_num_nodes_baseline,
    load_predictor,
    predict_molecules,
    predict_rows,
    save_predictor,
    train_property_predictor,
)
from moldiff.training.run import run_training

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ (configs/, results/)
#: EDM Table 3 (alpha Bohr³, gap/homo/lumo meV, mu D, Cv cal/(mol K)).
PAPER = {
    "Naive": {"alpha": 9.01, "gap": 1470, "homo": 645, "lumo": 1457, "mu": 1.616, "Cv": 6.857},
    "#Atoms": {"alpha": 3.86, "gap": 866, "homo": 426, "lumo": 813, "mu": 1.053, "Cv": 1.971},
    "EDM": {"alpha": 2.76, "gap": 655, "homo": 356, "lumo": 584, "mu": 1.111, "Cv": 1.101},
    "QM9": {"alpha": 0.10, "gap": 64, "homo": 39, "lumo": 36, "mu": 0.043, "Cv": 0.040},
}
FULL = {"cls_train": None, "cls_valid": None, "eval_rows": None, "cls_hidden": 128, "cls_layers": 7,
        "cls_epochs": 1000, "cls_minutes": None, "num_samples": 10100, "steps": None}
REDUCED = {"cls_train": 5000, "cls_valid": 1000, "eval_rows": 5000, "cls_hidden": 64, "cls_layers": 4,
           "cls_epochs": 40, "cls_minutes": 1.5, "num_samples": 100, "steps": 50}
#: The reduced (CPU) generator: the EDM config shrunk; context dropout 0.1 enables guidance.
REDUCED_GENERATOR = {
    "model": {"hidden_nf": 64, "n_layers": 4},
    "diffusion": {"timesteps": 500},
    "train": {"lr": 5e-4, "ema_decay": 0.995, "max_minutes": 3.5, "eval_every_steps": 10**9,
              "n_eval_samples": 0, "val_molecules": 256, "num_threads": 1, "context_dropout": 0.1,
              "checkpoint_every_steps": 10**9},
}


def settings(args: argparse.Namespace) -> dict:
    """The stage settings: ``FULL`` or ``REDUCED``, with the command line's overrides."""
    p = dict(REDUCED if args.reduced else FULL)
    for key in ("cls_train", "cls_epochs", "cls_minutes", "cls_hidden", "cls_layers", "num_samples", "steps"):
        value = getattr(args, key, None)
        if value is not None:
            p[key] = None if key == "cls_train" and value == 0 else value
    return p


def sampling_config(model, args: argparse.Namespace, steps: int | None) -> SamplingConfig:
    """The model's recommended sampler, spacing and noise injection, each overridden by its flag;
    ``steps=None``: all ``T`` steps (the full protocol), not the recommended count."""
    return model.recommended_sampling(
        method=getattr(args, "method", None), steps=steps or model.process.timesteps,
        spacing=getattr(args, "spacing", None), churn=getattr(args, "churn", None),
        churn_range=getattr(args, "churn_range", None), seed=args.seed)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generator_checkpoint(prop: str, args: argparse.Namespace, work: Path) -> Path:
    """A trained conditional generator for ``prop``: given, shipped (reduced) or trained now."""
    if args.generator:
        return Path(args.generator.format(prop=prop))
    shipped = PRETRAINED_DIR / f"qm9-{prop}.pt"
    if args.reduced and shipped.is_file() and not args.retrain:
        return shipped
    cfg = ExperimentConfig.load_yaml(ROOT / "configs" / f"qm9_cond_{prop}.yaml")
    if args.reduced:
        cfg = cfg.override(**REDUCED_GENERATOR)
    out = work / f"generator_{prop}"
    log(f"[{prop}] training the generator into {out}")
    run_training(cfg, out, progress=False)
    return out / "last.pt"


def ensure_property_distribution(path: Path, arrays, prop: str) -> None:
    """Store D_b's ``p(c | N)`` (1000 bins per N) in the checkpoint if it lacks it."""
    if "property_distribution" in load_checkpoint(path)["stats"]:
        return
    rows = get_split("second_half", "qm9")
    dist = PropertyDistribution.from_values(torch.as_tensor(arrays.n_atoms[rows]),
                                            {prop: torch.as_tensor(arrays.properties[prop][rows])})
    payload = load_checkpoint(path)
    payload["stats"] = {**payload["stats"], "property_distribution": dist.to_dict()}
    save_checkpoint(path, payload)


def classifier(prop: str, arrays, args: argparse.Namespace, work: Path) -> tuple:
    """φ_c for ``prop``: cached in ``work`` or trained on D_a now; returns ``(model, info)``."""
    p = settings(args)
    cls_path = Path(args.classifier.format(prop=prop)) if args.classifier else work / f"classifier_{prop}.pt"
    if cls_path.is_file() and not args.retrain:
        phi, meta = load_predictor(cls_path)
        return phi, meta["info"]
    d_a, valid = get_split("first_half", "qm9"), get_split("valid", "qm9")
    norm = property_mean_mad(arrays, valid, [prop])[prop]
    # valid rows are GDB-sorted (small molecules first): select a random subset, not the first rows.
    sel = np.random.default_rng(0).permutation(valid)[: p["cls_valid"]]
    phi, info = train_property_predictor(
        arrays, d_a[: p["cls_train"]], sel, prop, norm, hidden_nf=p["cls_hidden"],
        n_layers=p["cls_layers"], epochs=p["cls_epochs"], max_minutes=p["cls_minutes"],
        lr=1e-3 if prop in ("gap", "homo", "lumo") else 5e-4, log=log)
    save_predictor(cls_path, phi, prop, norm, arrays.elements, info)
    return phi, info


def run_property(prop: str, arrays, args: argparse.Namespace, work: Path) -> dict:
    """All four rows of Table 3 for one property."""
    p = settings(args)
    t0 = time.perf_counter()
    d_a, d_b, valid = (get_split(s, "qm9") for s in ("first_half", "second_half", "valid"))
    norm = property_mean_mad(arrays, valid, [prop])[prop]
    phi, cls_info = classifier(prop, arrays, args, work)
    eval_rows = d_b[: p["eval_rows"]]
    truth = arrays.properties[prop][eval_rows]
    pred_b = predict_rows(phi, arrays, eval_rows, prop, norm)
    perm = np.random.default_rng(0).permutation(len(truth))
    num_nodes = fit_num_nodes_baseline(arrays.n_atoms[d_a[: p["cls_train"]]],
                                       arrays.properties[prop][d_a[: p["cls_train"]]], norm)
    rows = {
        "Naive": float(np.mean(np.abs(pred_b - truth[perm]))),
        "#Atoms": float(np.mean(np.abs(num_nodes(arrays.n_atoms[eval_rows]) - truth))),
        "QM9": float(np.mean(np.abs(pred_b - truth))),
    }
    gen_path = generator_checkpoint(prop, args, work)
    ensure_property_distribution(gen_path, arrays, prop)
    model = from_checkpoint(gen_path)
    model.name = gen_path.stem
    gen = torch.Generator().manual_seed(args.seed)
    cond = conditional_inputs(model, p["num_samples"], None, None, None, gen)
    t_s = time.perf_counter()
    config = sampling_config(model, args, p["steps"])
    method, spacing, churn, churn_range = config.method, config.spacing, config.churn, config.churn_range
    mols = model.sample_raw(p["num_samples"], config=config,
                            num_atoms=cond.num_atoms.tolist(), context=cond.context)
    sample_s = time.perf_counter() - t_s
    atom_stab, mol_stab = stability_fractions(mols)  # EDM's distance rule, as the unconditional headline
    pred_gen = predict_molecules(phi, mols, arrays.elements, norm)
    err = np.abs(pred_gen - cond.values[:, 0].numpy())
    rows["EDM"] = float(np.mean(err))  # EDM's protocol: every sample, no filtering
    # Robust views for weak generators: the median, and the MAE over samples whose geometry stays
    # inside QM9's extent (all atoms within 10 Å of the centre), where φ_c is not extrapolating.
    bounded = np.array([np.abs(pos).max() <= 10.0 for _, pos in mols])
    extra = {"median_ae": float(np.median(err)), "bounded_fraction": float(bounded.mean()),
             "bounded_mae": float(np.mean(err[bounded])) if bounded.any() else float("nan"),
             "atom_stability": atom_stab, "mol_stability": mol_stab}
    log(f"[{prop}] " + ", ".join(f"{k} {v:.4g}" for k, v in {**rows, **extra}.items()))
    return {"mae": rows, "generator_robust": extra, "unit": PROPERTIES[prop].unit, "norm": list(norm),
            "classifier": cls_info,
            "generator": str(gen_path), "num_samples": p["num_samples"], "steps": p["steps"],
            "sampler": method, "spacing": spacing, "churn": churn, "churn_range": churn_range,
            "sample_seconds": sample_s, "seconds": time.perf_counter() - t0}


def sweep(prop: str, arrays, args: argparse.Namespace, work: Path, png: Path) -> dict:
    """Achieved (φ_c) vs requested property and mean N over a sweep of targets, for guidance 0 and 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phi, _ = classifier(prop, arrays, args, work)
    gen_path = generator_checkpoint(prop, args, work)
    ensure_property_distribution(gen_path, arrays, prop)
    model = from_checkpoint(gen_path)
    # φ_c's own normalisation (valid split, as in run_property), not the generator's: the two differ,
    # and de-normalising φ_c's output with the generator's shifted every achieved value (sessions 2-5).
    norm = property_mean_mad(arrays, get_split("valid", "qm9"), [prop])[prop]
    lo, hi = np.percentile(arrays.properties[prop][get_split("second_half", "qm9")], [5, 95])
    targets = np.linspace(lo, hi, 5)
    out: dict = {"targets": targets.tolist(), "unit": PROPERTIES[prop].unit}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    for w in (0.0, 2.0):
        # Through the public API, as a user asks for a target: N ~ p(N | target), the target's range
        # check and (w > 0) classifier-free guidance. The same seed per target draws the same N for
        # both weights, so w = 0 and w = 2 compare alike.
        mols = [m for c in targets for m in model.sample_raw(
            args.sweep_num, config=sampling_config(model, args, settings(args)["steps"]), target={prop: float(c)},
            guidance=w)]
        pred = predict_molecules(phi, mols, arrays.elements, norm).reshape(len(targets), args.sweep_num)
        sizes = np.array([len(sym) for sym, _ in mols], dtype=float).reshape(len(targets), args.sweep_num).mean(1)
        achieved = list(pred)
        q25, med, q75 = (np.array([np.percentile(a, q) for a in achieved]) for q in (25, 50, 75))
        out[f"guidance_{w:g}"] = {"achieved_mean": [float(a.mean()) for a in achieved],
                                  "achieved_median": med.tolist(), "achieved_q25": q25.tolist(),
                                  "achieved_q75": q75.tolist(), "mean_n_atoms": [float(n) for n in sizes]}
        # Medians and quartiles: an exploded sample (weak generator) makes φ_c extrapolate wildly.
        ax1.errorbar(targets + (w - 1) * 0.3, med, yerr=[med - q25, q75 - med], marker="o", capsize=3,
                     label=f"w = {w:g} (median, IQR)")
        ax2.plot(targets, sizes, marker="o", label=f"w = {w:g}")
    ax1.plot(targets, targets, "k--", lw=1, label="achieved = requested")
    span = hi - lo
    ax1.set_ylim(lo - span, hi + span)
    unit = PROPERTIES[prop].unit
    ax1.set(xlabel=f"requested {prop} ({unit})", ylabel=f"φ_c({prop}) of samples ({unit})", title="property")
    ax2.set(xlabel=f"requested {prop} ({unit})", ylabel="mean number of atoms", title="size")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    phi_name = Path(args.classifier.format(prop=prop)).stem if args.classifier else "reduced"
    fig.suptitle(f"moldiff {gen_path.stem}, {args.sweep_num} samples per target, φ_c {phi_name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return out


def format_table(results: dict) -> str:
    """Markdown table: moldiff rows beside the paper's."""
    props = list(results)
    head = "| row | " + " | ".join(f"{k} ({PROPERTIES[k].unit})" for k in props) + " |"
    lines = [head, "|" + "---|" * (len(props) + 1)]
    for row in ("Naive", "#Atoms", "EDM", "QM9"):
        name = "moldiff (generator)" if row == "EDM" else f"{row} (moldiff)"
        lines.append(f"| {name} | " + " | ".join(f"{results[k]['mae'][row]:.4g}" for k in props) + " |")
        lines.append(f"| {row} (paper) | " + " | ".join(f"{PAPER[row][k]:g}" for k in props) + " |")
    lines.append("| moldiff generator, median AE | "
                 + " | ".join(f"{results[k]['generator_robust']['median_ae']:.4g}" for k in props) + " |")
    lines.append("| moldiff generator, MAE of samples within 10 Å | " + " | ".join(
        f"{results[k]['generator_robust']['bounded_mae']:.4g} "
        f"({100 * results[k]['generator_robust']['bounded_fraction']:.0f} %)" for k in props) + " |")
    lines.append("| moldiff generator, atom / molecule stability (EDM rule) | " + " | ".join(
        f"{100 * results[k]['generator_robust'].get('atom_stability', float('nan')):.1f} / "
        f"{100 * results[k]['generator_robust'].get('mol_stability', float('nan')):.1f} %" for k in props) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true", help="CPU-sized run (minutes per property)")
    ap.add_argument("--properties", default=",".join(PROPERTY_NAMES), help="comma-separated subset")
    ap.add_argument("--generator", default=None, help="checkpoint template, e.g. runs/c_{prop}/last.pt")
    ap.add_argument("--retrain", action="store_true", help="retrain classifiers/generators even if cached")
    ap.add_argument("--classifier", default=None,
                    help="φ_c checkpoint template, e.g. runs/phi_{prop}.pt (trained there when missing)")
    ap.add_argument("--cls-train", type=int, default=None, help="D_a molecules for φ_c (0: all of D_a)")
    ap.add_argument("--cls-epochs", type=int, default=None, help="φ_c epochs (the cosine schedule spans them)")
    ap.add_argument("--cls-minutes", type=float, default=None, help="φ_c wall-clock cap")
    ap.add_argument("--cls-hidden", type=int, default=None, help="φ_c width")
    ap.add_argument("--cls-layers", type=int, default=None, help="φ_c layers")
    ap.add_argument("--num-samples", type=int, default=None, help="generated molecules per property")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (reduced: 50)")
    ap.add_argument("--method", default=None, help="sampler (default: the model's recommendation)")
    ap.add_argument("--spacing", default=None, help="step spacing (default: the model's recommendation)")
    ap.add_argument("--churn", type=float, default=None, help="noise injection (default: the model's recommendation)")
    ap.add_argument("--churn-range", type=lambda t: tuple(float(v) for v in t.split(",")), default=None,
                    metavar="LO,HI", help="window of --churn in t/T")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "results" / "tmp" / "qm9_conditional"))
    ap.add_argument("--out", default=None, help="JSON (default: results/qm9_conditional[_reduced].json)")
    ap.add_argument("--sweep", default=None, help="instead: sweep targets of this property, plot to --png")
    ap.add_argument("--sweep-num", type=int, default=12, help="samples per target in --sweep")
    ap.add_argument("--png", default=str(ROOT.parent / "docs" / "conditional_sweep.png"))
    args = ap.parse_args(argv)
    props = [s.strip() for s in args.properties.split(",") if s.strip()]
    bad = [s for s in props if s not in PROPERTIES]
    if bad:
        ap.error(f"unknown property {bad[0]!r}; allowed: {', '.join(PROPERTY_NAMES)}")
    torch.set_num_threads(1 if args.reduced else torch.get_num_threads())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arrays = load_dataset("qm9")
    if args.sweep:
        res = sweep(args.sweep, arrays, args, work, Path(args.png))
        out = Path(args.out or ROOT / "results" / f"qm9_conditional_sweep_{args.sweep}.json")
        out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=1))
        return 0
    results = {prop: run_property(prop, arrays, args, work) for prop in props}
    out = Path(args.out or ROOT / "results" / f"qm9_conditional{'_reduced' if args.reduced else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reduced": args.reduced, "settings": settings(args),
                               "paper": PAPER, "results": results}, indent=2))
    print(format_table(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
