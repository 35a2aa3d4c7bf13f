"""Score the QM9 training split itself with moldiff's EDM metrics (the "Data" row of EDM Table 2).

    .venv/bin/python benchmarks/quality/qm9_data_metrics.py [--split train] [--workers 2] [--write-reference]

Prints moldiff's figures beside those of EDM's own code on the same split and the paper's row, and
writes benchmarks/results/qm9_data_metrics.json (and a per-molecule CSV under results/tmp/).
``--write-reference`` also (re)writes the novelty reference data/qm9/train_smiles.txt.gz.
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

import pandas as pd

from moldiff.evaluation import edm_reference_smiles, evaluate_molecules, save_reference_smiles
from moldiff.evaluation.reference import REFERENCE_FILENAME
from moldiff.evaluation.report import jsonable
from moldiff.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import RESULTS, load_split  # noqa: E402

#: EDM's own code on EDM's QM9 train split (shared/reference/edm_protocol.md §7.1, §2).
EDM_CODE = {"atom_stability": 0.9936, "mol_stability": 0.9529, "validity": 0.9767, "uniqueness": 0.9996}
#: EDM paper, Table 2, "Data" row.
EDM_PAPER = {"atom_stability": 0.990, "mol_stability": 0.952, "validity": 0.977, "valid_and_unique": 0.977}


def _pct(x: float | None) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=("train", "valid", "test"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--write-reference", action="store_true", help="also write data/qm9/train_smiles.txt.gz")
    args = ap.parse_args()

    t0 = time.perf_counter()
    mols, source = load_split(args.split)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    table, summary = evaluate_molecules(mols, workers=args.workers)
    t_eval = time.perf_counter() - t0

    print(f"QM9 {args.split}: {len(mols)} molecules from {source}; scored in {t_eval:.1f} s "
          f"(load {t_load:.1f} s, workers={args.workers})")
    print(f"{'metric':<20}{'moldiff':>9}{'EDM code':>10}{'EDM paper':>11}{'diff vs code (pts)':>20}")
    for key in ("atom_stability", "mol_stability", "validity", "uniqueness", "valid_and_unique",
                "validity_connected", "connected"):
        ours, code, paper = summary[key], EDM_CODE.get(key), EDM_PAPER.get(key)
        diff = f"{100 * (ours - code):+.3f}" if code is not None else ""
        print(f"{key:<20}{_pct(ours):>9}{_pct(code):>10}{_pct(paper):>11}{diff:>20}")
    unstable = table.loc[~table["mol_stable"], "reason"].str.extract(r"valence\): ([^;]*)")[0].dropna()
    counts = pd.Series(" ".join(unstable).split()).value_counts()
    print("unstable atoms (element+valence):", ", ".join(f"{k} {v}" for k, v in counts.head(8).items()))

    record = {
        "split": args.split, "num_molecules": len(mols), "source": source, "summary": jsonable(summary),
        "edm_code": EDM_CODE, "edm_paper": EDM_PAPER,
        "unstable_atom_counts": {k: int(v) for k, v in counts.items()},
        "seconds_evaluate": round(t_eval, 2), "workers": args.workers,
        "command": f"python benchmarks/quality/qm9_data_metrics.py --split {args.split} --workers {args.workers}",
        "date": datetime.date.today().isoformat(),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (no GPU)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "qm9_data_metrics.json" if args.split == "train" else f"qm9_data_metrics_{args.split}.json"
    with atomic_write(RESULTS / name) as fh:
        json.dump(record, fh, indent=2)
    (RESULTS / "tmp").mkdir(exist_ok=True)
    with atomic_write(RESULTS / "tmp" / f"qm9_{args.split}_checks.csv") as fh:
        table.drop(columns=["malformed"]).to_csv(fh, index=False)
    print(f"wrote {RESULTS / name}")

    if args.write_reference:
        from moldiff.data.qm9 import data_root

        path = save_reference_smiles(data_root() / "qm9" / REFERENCE_FILENAME, edm_reference_smiles(mols))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
