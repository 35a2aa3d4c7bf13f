"""Export a training checkpoint as a shipped model (``moldiff/pretrained/NAME.pt``).

    .venv/bin/python benchmarks/ops/ship.py runs/drugs/last.pt --name drugs --sampler dpm2sde --steps 100 \\
        --note "heavy atoms + bonds, 5 x 64, MOSES 100k, CPU"

Writes a sampling-only copy (config, dataset statistics, raw and EMA weights; no optimizer state) with
:func:`moldiff.checkpoint.export_checkpoint`, recording in ``info``: the recommended sampler, steps, spacing,
noise injection and last step (``MolDiff.default_sampling`` / ``default_spacing`` /
``default_noise`` read them), the source file, the training counters (step, molecule
passes, training minutes), the date and ``--note``. Then it loads the result through the public API
(``moldiff.load_model(NAME)``) and samples two molecules as a smoke test, and prints the file size.
Replacing an existing shipped model needs ``--replace``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="training checkpoint (last.pt)")
    ap.add_argument("--name", required=True, help="shipped model name (moldiff/pretrained/NAME.pt)")
    ap.add_argument("--sampler", default="dpm2sde", help="recommended sampler (info['sampling'])")
    ap.add_argument("--steps", type=int, default=100, help="recommended number of steps")
    ap.add_argument("--spacing", default="uniform", choices=("uniform", "quadratic", "logsnr"),
                    help="recommended step spacing (info['sampling']['spacing'])")
    ap.add_argument("--churn", type=float, default=0.0, help="recommended noise injection (0: none)")
    ap.add_argument("--churn-range", default=None, metavar="LO,HI", help="recommended window of the injection (t/T)")
    ap.add_argument("--final", default="sample", choices=("sample", "mean"), help="recommended last step")
    ap.add_argument("--note", default="", help="free text stored in info['note']")
    ap.add_argument("--replace", action="store_true", help="overwrite an existing shipped model")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of moldiff/pretrained/NAME.pt")
    args = ap.parse_args(argv)

    from moldiff.checkpoint import export_checkpoint, load_checkpoint
    from moldiff.sampling.sampler import SAMPLERS

    if args.sampler not in SAMPLERS:
        raise SystemExit(f"unknown sampler {args.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    dst = args.out or ROOT / "moldiff" / "pretrained" / f"{args.name}.pt"
    if dst.exists() and not args.replace:
        raise SystemExit(f"{dst} exists; pass --replace to overwrite it")
    from moldiff.sampling.config import SamplingConfig

    churn_range = None if args.churn_range is None else tuple(float(v) for v in args.churn_range.split(","))
    try:  # checked as the sampler will check it
        SamplingConfig(method=args.sampler, steps=args.steps, spacing=args.spacing, churn=args.churn,
                       churn_range=churn_range, final=args.final)
    except ValueError as exc:
        raise SystemExit(f"invalid recommendation: {exc}") from None
    payload = load_checkpoint(args.checkpoint)
    state = payload.get("state", {})
    batch = int(payload["config"]["train"]["batch_size"])
    info = {
        "sampling": {"method": args.sampler, "steps": args.steps, "spacing": args.spacing,
                     **({"churn": args.churn, "churn_range": list(churn_range) if churn_range else None}
                        if args.churn else {}),
                     **({"final": args.final} if args.final != "sample" else {})},
        "source": str(args.checkpoint),
        "exported": datetime.date.today().isoformat(),
        "molecule_passes_approx": int(state.get("step", 0)) * batch,
        "train_minutes": round(float(state.get("elapsed_s", 0.0)) / 60, 1),
        "note": args.note,
    }
    export_checkpoint(args.checkpoint, dst, info)

    import moldiff

    model = moldiff.load_model(str(dst))
    mols = model.sample_raw(2, steps=5, seed=0)
    print(f"shipped {dst} ({dst.stat().st_size / 1e6:.1f} MB): step {state.get('step')}, "
          f"~{info['molecule_passes_approx']:,} molecule passes, {info['train_minutes']} training min; "
          f"recommended {args.sampler} {args.steps} steps ({args.spacing}, churn {args.churn:g}, "
          f"final {args.final}); smoke test sampled {len(mols)} molecules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
