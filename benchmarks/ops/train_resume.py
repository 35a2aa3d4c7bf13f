"""Resume training of a moldiff checkpoint on packed QM9 within one short GPU command, then evaluate.

    python benchmarks/ops/train_resume.py --checkpoint moldiff/pretrained/qm9.pt \\
        --data .gpu/qm9_train.npz --out "$OUT" --device cuda --max-minutes 7 [--bf16] [--compile]

CPU smoke test (seconds)::

    .venv/bin/python benchmarks/ops/train_resume.py --checkpoint /tmp/tiny.pt --data .gpu/qm9_train.npz \\
        --out /tmp/resume --device cpu --max-minutes 0.2 --max-molecules 512 --eval-samples 16 --eval-steps 10

Steps: load the checkpoint (resume exactly when it holds optimizer state, else start from its
raw and EMA weights with a fresh AdamW); evaluate the EMA model (``--eval-samples`` molecules,
``--eval-steps`` steps of ``--eval-method``); train with moldiff's :class:`~moldiff.training.Trainer`
(EDM clipping, EMA, the checkpoint's config; only ``max_minutes``, ``device``, ``batch_size``/``lr``
when given, and the logging cadence are overridden; ``--bf16`` sets ``model.precision: bf16``, so the
run trains with bf16 autocast and its checkpoint config records it) until ``--max-minutes``; evaluate
again (evaluation samples at ``--eval-precision``, fp32 by default, so before/after compare alike);
write ``OUT/checkpoint.pt`` (config, stats, weights, EMA; no optimizer state, so it stays small),
``OUT/metrics.json`` and ``OUT/log.csv``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import load_packed  # noqa: E402

from moldiff.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from moldiff.config import ExperimentConfig  # noqa: E402
from moldiff.data.loader import MolLoader  # noqa: E402
from moldiff.pipeline import MolDiff, build_process  # noqa: E402
from moldiff.sampling.sampler import SAMPLERS  # noqa: E402
from moldiff.training.trainer import Trainer  # noqa: E402
from moldiff.types import DatasetStats  # noqa: E402

SUMMARY = ("atom_stability", "mol_stability", "validity", "uniqueness")


@torch.no_grad()
def evaluate(process, config: ExperimentConfig, stats: DatasetStats, num: int, steps: int, method: str, seed: int,
             device: str, precision: str = "fp32") -> dict[str, Any]:
    """Sample ``num`` molecules with ``process`` at ``precision`` and return the EDM summary plus timing.

    Sampling goes through the public API (:meth:`moldiff.MolDiff.sample_raw`: ``N ~ p(N)``, the
    argument checks, and ``p(c | N)`` for a conditional checkpoint), as a user's would.
    """
    if num <= 0:
        return {}
    process.denoiser.precision = precision  # a runtime switch; weights and training are unaffected
    model = MolDiff(process, config, stats)
    t0 = time.perf_counter()
    mols = model.sample_raw(num, steps=steps, seed=seed, method=method, device=device)
    seconds = time.perf_counter() - t0
    try:  # RDKit may be missing on the GPU image; carry its wheel (benchmarks/ops/README.md)
        from moldiff.evaluation import evaluate_molecules

        _, summary = evaluate_molecules(mols)
        res = {k: summary.get(k) for k in SUMMARY}
    except ImportError as exc:  # EDM stability needs only numpy; validity and the rest need RDKit
        from moldiff.evaluation.stability import stability_fractions

        atom, mol = stability_fractions(mols)
        res = {"atom_stability": atom, "mol_stability": mol, "note": f"RDKit metrics skipped: {exc}"}
    res.update(num=num, steps=steps, method=method, precision=precision, sample_seconds=seconds)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("moldiff/pretrained/qm9.pt"))
    ap.add_argument("--data", type=Path, default=Path(".gpu/qm9_train.npz"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--max-minutes", type=float, default=7.0, help="training time (evaluation comes on top)")
    ap.add_argument("--max-molecules", type=int, default=None, help="train on the first N molecules only")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--eval-samples", type=int, default=500)
    ap.add_argument("--eval-steps", type=int, default=100)
    ap.add_argument("--eval-method", default="ancestral", choices=SAMPLERS)
    ap.add_argument("--skip-eval-before", action="store_true")
    ap.add_argument("--bf16", action="store_true",
                    help="train with model.precision=bf16 (autocast of the invariant MLPs; positions fp32)")
    ap.add_argument("--eval-precision", default="fp32", choices=["fp32", "bf16"],
                    help="model.precision of the evaluation sampling")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser (in place)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    payload = load_checkpoint(args.checkpoint)
    config = ExperimentConfig.from_dict(payload["config"])
    stats = DatasetStats.from_dict(payload["stats"])
    train_over: dict[str, Any] = {"max_minutes": args.max_minutes, "device": args.device, "max_steps": None,
                                  "epochs": 10**6,
                                  "eval_every_steps": 10**9, "checkpoint_every_steps": 10**9,
                                  "log_every_steps": 50, "n_eval_samples": 0, "seed": args.seed}
    if args.batch_size:
        train_over["batch_size"] = args.batch_size
    if args.lr:
        train_over["lr"] = args.lr
    config = config.override(train=train_over, model={"precision": "bf16"} if args.bf16 else {})
    arrays = load_packed(args.data, args.max_molecules)
    elements = list(stats.elements)
    if list(arrays.elements) != elements:
        raise SystemExit(f"data elements {arrays.elements} differ from the checkpoint's {elements}")
    loader = MolLoader(arrays, batch_size=config.train.batch_size, shuffle=True, seed=args.seed)
    t_load = time.perf_counter() - t_start

    process = build_process(config, len(elements), stats.context_nf)
    work = Path(tempfile.mkdtemp(prefix="moldiff_resume_"))
    shutil.copy(args.checkpoint, work / "last.pt")
    trainer = Trainer(process, config, stats, train_batches=loader.iter_batches, out_dir=work,
                      device=args.device, progress=False)
    if "optimizer" in payload:
        trainer.resume(work / "last.pt")
        trainer.state.elapsed_s = 0.0  # the time budget counts from now
        trainer.state.best_val_nll = float("inf")
        mode = "resumed (optimizer, EMA, clipping history, counters)"
    else:
        trainer.init_from(work / "last.pt")
        mode = "initialised from weights (checkpoint has no optimizer state)"
    step0 = trainer.state.step
    if args.compile:
        trainer.process.denoiser.compile(dynamic=True)
    print(f"{mode}; step {step0}; {arrays.num_molecules} molecules; load {t_load:.1f} s", flush=True)

    eval_args = (config, stats, args.eval_samples, args.eval_steps, args.eval_method, args.seed, args.device,
                 args.eval_precision)
    before = {} if args.skip_eval_before else evaluate(trainer.ema, *eval_args)
    print(f"before: {before}", flush=True)
    t0 = time.perf_counter()
    state = trainer.fit()
    train_s = time.perf_counter() - t0
    trained = state.step - step0
    after = evaluate(trainer.ema, *eval_args)
    print(f"after: {after}", flush=True)

    info = dict(payload.get("info", {}))
    info.update(resumed_from=str(args.checkpoint), resume_steps=trained, total_steps=state.step)
    save_checkpoint(args.out / "checkpoint.pt", {
        "config": config.to_dict(), "stats": stats.to_dict(), "model": trainer.process.state_dict(),
        "ema": trainer.ema.state_dict(), "info": info,
    })
    if (work / "log.csv").is_file():
        shutil.copy(work / "log.csv", args.out / "log.csv")
    bs = config.train.batch_size
    metrics = {
        "mode": mode, "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "bf16": args.bf16, "precision": config.model.precision, "eval_precision": args.eval_precision,
        "compile": args.compile, "molecules": arrays.num_molecules, "batch_size": bs,
        "start_step": step0, "end_step": state.step, "steps": trained, "train_seconds": train_s,
        "train_mol_per_s": trained * bs / max(train_s, 1e-9),
        "epochs_done": trained * bs / arrays.num_molecules,
        "before": before, "after": after,
        "checkpoint_mib": (args.out / "checkpoint.pt").stat().st_size / 2**20,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return metrics


if __name__ == "__main__":
    main()
