"""Speed of moldiff.evaluation on QM9-size molecules.

    .venv/bin/python benchmarks/speed/bench_evaluation.py [--num 10000] [--subset 1000]

Times the EDM metrics (stability, validity, uniqueness, novelty against the QM9 train reference) on
``--num`` molecules of the QM9 test split, with 1 and 2 workers, and the slower optional checks
(rdkit_bonds, druglike + rings, geometry = PoseBusters, strain = MMFF) separately on ``--subset``
molecules. Writes benchmarks/results/bench_evaluation.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from moldiff.evaluation import edm_reference_smiles, evaluate_molecules, load_reference_smiles
from moldiff.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import RESULTS, ROOT, load_split  # noqa: E402

REFERENCE = ROOT / "data" / "qm9" / "train_smiles.txt.gz"


def _time(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--subset", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    mols = load_split("test")[0]
    mols = (mols * (args.num // len(mols) + 1))[: args.num]
    def _reference():
        if REFERENCE.is_file():
            return load_reference_smiles(REFERENCE)
        return set(edm_reference_smiles(load_split("train")[0]))

    t_ref, reference = _time(_reference)
    record: dict = {"num_molecules": len(mols), "reference_load_s": round(t_ref, 3),
                    "edm": {}, "optional": {}}
    print(f"reference: {len(reference)} SMILES loaded in {t_ref:.2f} s")
    for workers in (1, 2):
        t, (_, summary) = _time(lambda w=workers: evaluate_molecules(mols, reference, workers=w), args.repeat)
        record["edm"][f"workers_{workers}"] = {"seconds": round(t, 3),
                                               "molecules_per_s": round(len(mols) / t)}
        print(f"EDM metrics (stability, validity, uniqueness, novelty), {len(mols)} molecules, "
              f"workers={workers}: {t:.2f} s ({len(mols) / t:,.0f} mol/s)")
    record["edm_summary"] = {k: summary[k] for k in ("mol_stability", "validity", "uniqueness", "novelty")}

    sub = mols[: args.subset]
    for checks in (("rdkit_bonds",), ("druglike", "rings"), ("geometry",), ("strain",)):
        t, _ = _time(lambda c=checks: evaluate_molecules(sub, checks=c))
        t_edm, _ = _time(lambda: evaluate_molecules(sub))
        extra = max(t - t_edm, 0.0)
        name = "+".join(checks)
        record["optional"][name] = {"molecules": len(sub), "seconds_total": round(t, 3),
                                    "ms_per_molecule_extra": round(1e3 * extra / len(sub), 3),
                                    "extrapolated_s_per_10k": round(extra * 10000 / len(sub), 1)}
        print(f"{name:<16} {len(sub)} molecules: {t:.2f} s total, {1e3 * extra / len(sub):.2f} ms/mol on top "
              f"of EDM (≈ {extra * 10000 / len(sub):.0f} s per 10k, 1 worker)")

    record.update(
        command=f"python benchmarks/speed/bench_evaluation.py --num {args.num} --subset {args.subset}",
        date=datetime.date.today().isoformat(),
        device=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (no GPU)",
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_write(RESULTS / "bench_evaluation.json") as fh:
        json.dump(record, fh, indent=2)
    print(f"wrote {RESULTS / 'bench_evaluation.json'}")


if __name__ == "__main__":
    main()
