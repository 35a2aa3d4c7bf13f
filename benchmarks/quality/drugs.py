"""Drug-like benchmark: generated molecules and the dataset's own conformers against MOSES.

    .venv/bin/python benchmarks/quality/drugs.py [SAMPLES.sdf --label drugs] [--dataset moses2k]
        [--data-molecules 1000] [--reference-size 10000] [--no-data]

Rows (each one column of the table):

* ``data (<dataset>)``: the ceiling. ``--data-molecules`` conformers of the dataset, taken from its
  test split, then valid, then train (novelty is therefore below 100 % when the held-out splits are
  smaller), written to SDF **with their own bonds and formal charges** and scored like a sample.
* ``SAMPLES.sdf`` (optional, ``--label``): generated molecules, e.g. ``moldiff sample --model drugs``.

Everything is scored by :func:`moldiff.evaluation.druglike_benchmark.benchmark_molecules` (the same
code as ``moldiff evaluate FILE --reference <dataset>``): validity with the file's bonds, EDM tables
and rdDetermineBonds; uniqueness; novelty against the dataset's training SMILES; FCD / SNN / Frag /
Scaf against a seeded MOSES test sample and IntDiv; QED / SA / logP / MW / ring distributions against
the dataset's training molecules (Wasserstein-1); PoseBusters ``mol_fast`` pass rate; MMFF strain.

Writes ``benchmarks/results/drugs_<dataset>.json`` (rows kept across runs: a model run with
``--no-data`` keeps the data row), ``benchmarks/results/drugs_<dataset>.md`` and the distribution
plot ``docs/drugs_distributions.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from moldiff.data import data_root, get_dataset
from moldiff.evaluation import druglike_benchmark as db
from moldiff.evaluation.report import jsonable
from moldiff.io import bonded_mol, read_molecules, write_sdf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import RESULTS, ROOT, machine  # noqa: E402


def write_data_sdf(name: str, n: int, path: Path) -> dict[str, int]:
    """Write ``n`` molecules of dataset ``name`` (test, then valid, then train) with their own bonds."""
    ds = get_dataset(name)
    arrays = ds.load()
    if not arrays.has_bonds:
        raise SystemExit(f"{name}: the dataset stores no bonds")
    picked: list[int] = []
    counts: dict[str, int] = {}
    for split in ("test", "valid", "train"):
        idx = [int(i) for i in ds.split(split)][: max(0, n - len(picked))]
        counts[split] = len(idx)
        picked.extend(idx)
    mols = []
    for i in picked:
        symbols, pos = arrays.molecule(i)
        lo, hi = arrays.ptr[i], arrays.ptr[i + 1]
        charges = arrays.formal_charge[lo:hi] if arrays.formal_charge is not None else None
        mols.append(bonded_mol(symbols, pos, arrays.bonds(i), charges, name=str(arrays.names[i])))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sdf(path, mols)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="?", default=None, help="SDF of generated molecules")
    parser.add_argument("--label", default=None, help="column label of the SDF row (default: file stem)")
    parser.add_argument("--dataset", default="moses2k", help="built dataset: novelty and distributions")
    parser.add_argument("--data-molecules", type=int, default=1000, help="molecules in the data row")
    parser.add_argument("--reference-size", type=int, default=10_000, help="MOSES test sample (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-data", action="store_true", help="skip the data row (keep a stored one)")
    parser.add_argument("--device-label", default="2-core CPU", help="what it ran on, for the table")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "drugs_distributions.png"))
    args = parser.parse_args()

    out_json = RESULTS / f"drugs_{args.dataset}.json"
    stored = json.loads(out_json.read_text()) if out_json.is_file() else {}
    rows: dict[str, dict] = stored.get("rows", {})
    props: dict[str, dict[str, np.ndarray]] = {}

    t0 = time.time()
    ref = db.load_reference(args.dataset, data_root(), n_test=args.reference_size, seed=args.seed)
    timings = {"reference_s": round(time.time() - t0, 1)}
    print(f"reference: {ref.novelty_source}; distributions: {ref.properties_source}; "
          f"MOSES test sample {ref.info['moses_test_sample']} ({timings['reference_s']} s)", flush=True)

    jobs: list[tuple[str, Path, dict]] = []
    if not args.no_data:
        path = RESULTS / "tmp" / f"drugs_{args.dataset}_data.sdf"
        counts = write_data_sdf(args.dataset, args.data_molecules, path)
        jobs.append((f"data ({args.dataset})", path, {"splits": counts}))
    if args.samples:
        jobs.append((args.label or Path(args.samples).stem, Path(args.samples), {"file": str(args.samples)}))
    for label, path, extra in jobs:
        t = time.time()
        records = read_molecules(path, strict=False)
        table, summary = db.benchmark_molecules(records, ref)
        seconds = round(time.time() - t, 1)
        rows[label] = {**jsonable(summary), **extra, "seconds": seconds}
        props[label] = db.table_properties(table)
        table.to_csv(RESULTS / "tmp" / f"drugs_{args.dataset}_{label.split()[0]}.csv", index=False)
        print(f"\n{label}: {len(table)} molecules in {seconds} s\n{db.format_drug_summary(summary)}", flush=True)

    result = {
        "benchmark": "drug-like (benchmarks/quality/drugs.py)",
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute()
                                         else sys.argv[0], *sys.argv[1:]]),
        "dataset": args.dataset,
        "reference": {"novelty": ref.novelty_source, "distributions": ref.properties_source, **ref.info},
        "machine": {**machine("cpu", 1), "label": args.device_label},
        "timings": timings,
        "rows": rows,
    }
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    md = db.markdown_table(rows)
    (RESULTS / f"drugs_{args.dataset}.md").write_text(md + "\n")
    if props:
        db.plot_distributions(props, ref.properties, args.plot, reference_label=ref.properties_source)
        print(f"plot: {args.plot}")
    print(f"\n{md}\nwrote {out_json}")


if __name__ == "__main__":
    main()
