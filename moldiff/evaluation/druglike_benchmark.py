"""Drug-like benchmark: validity, MOSES metrics, property distributions, PoseBusters and strain.

:func:`benchmark_molecules` scores generated 3D molecules (SDF records, with or without bonds)
against a :class:`DrugReference` (:func:`load_reference`: ``"moses"`` or a dataset built with
``moldiff data build``). What is measured, per molecule and then pooled:

* **Validity and connectivity, three ways**: RDKit sanitisation of the molecule with its **own
  bonds and formal charges** (when the SDF carries bonds); EDM's bond-length tables
  (:func:`~moldiff.evaluation.report.evaluate_molecules`); RDKit ``rdDetermineBonds`` (xyz2mol with
  Hückel connectivity, total charge from the file's formal charges) as a second opinion. The
  *primary* molecule, used for everything below, is the own-bond one when the file has bonds, else
  the ``rdDetermineBonds`` one, else EDM's.
* **Uniqueness** (distinct / valid) and **novelty** (distinct valid SMILES not in the reference's
  training SMILES / distinct valid SMILES) on canonical heavy-atom SMILES without stereo of the
  largest fragment.
* **MOSES metrics** against a seeded sample of the MOSES test set (:mod:`.moses_metrics`): FCD,
  SNN, Frag, Scaf, IntDiv1/2.
* **Distributions** of QED, SA score, logP, molecular weight, ring count and ring sizes against the
  reference data: means and 1-D Wasserstein distances (plot: :func:`plot_distributions`).
* **PoseBusters** ``mol_fast`` pass rate (over all molecules; invalid ones fail), the fraction of valid
  molecules failing each check, and **MMFF strain**:
  MMFF94 energy of the given conformer minus that of the local minimum reached by relaxing it
  (kcal/mol, median over molecules MMFF can type).

MOSES SMILES come from the ``molsets`` package's data files, located with
``importlib.util.find_spec("moses")``; ``moses`` itself is never imported.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from moldiff.evaluation import druglike, geometry, moses_metrics, validity
from moldiff.evaluation.reference import REFERENCE_FILENAME, load_reference_smiles

__all__ = [
    "PROPERTIES", "DrugReference", "moses_smiles_file", "read_moses_smiles", "load_reference",
    "molecule_properties", "benchmark_molecules", "format_drug_summary", "markdown_table",
    "plot_distributions", "MOSES_SPLITS",
]

#: MOSES SMILES files shipped by ``molsets`` (``moses/dataset/data/<split>.csv.gz``).
MOSES_SPLITS: tuple[str, ...] = ("train", "test", "test_scaffolds")
#: Per-molecule descriptors compared as distributions (column -> label with unit).
PROPERTIES: dict[str, str] = {"qed": "QED", "sa_score": "SA score", "logp": "logP (Crippen)",
                              "mol_weight": "molecular weight (Da)", "n_rings": "rings per molecule"}
_CACHE_VERSION = 1


# ---------------------------------------------------------------------------------- reference
def moses_smiles_file(split: str = "test") -> Path:
    """Path of a MOSES SMILES file inside the installed ``molsets`` package (not imported).

    Raises:
        ValueError: Unknown split, or ``molsets`` not installed (the message says how to install it).
    """
    if split not in MOSES_SPLITS:
        raise ValueError(f"unknown MOSES split {split!r}; allowed: {', '.join(MOSES_SPLITS)}")
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the MOSES SMILES are not installed: pip install --no-deps molsets")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data" / f"{split}.csv.gz"
    if not path.is_file():
        raise ValueError(f"{path}: missing from the molsets package")
    return path


def read_moses_smiles(split: str = "test") -> list[str]:
    """All SMILES of a MOSES split (the first CSV column, header skipped), as stored."""
    with gzip.open(moses_smiles_file(split), "rt") as fh:
        lines = fh.read().splitlines()
    return [line.split(",", 1)[0].strip() for line in lines[1:] if line.strip()]


def _sample(items: Sequence[str], n: int | None, seed: int) -> list[str]:
    if n is None or n <= 0 or n >= len(items):
        return list(items)
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in idx]


def molecule_properties(mols: Iterable[Chem.Mol]) -> dict[str, Any]:
    """QED, SA, logP, molecular weight, ring counts per molecule, and every ring's size (pooled).

    Returns:
        ``{column: float array, ..., "ring_sizes": int array}`` with the columns of :data:`PROPERTIES`.
    """
    cols: dict[str, list[float]] = {k: [] for k in PROPERTIES}
    sizes: list[int] = []
    for m in mols:
        d = druglike.check_druglike(m)["results"]
        r = druglike.check_rings(m)
        for k in ("qed", "sa_score", "logp", "mol_weight"):
            cols[k].append(d[k])
        cols["n_rings"].append(r["results"]["n_rings"])
        sizes.extend(r["details"]["ring_sizes"])
    out: dict[str, Any] = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    out["ring_sizes"] = np.asarray(sizes, dtype=np.int64)
    return out


@dataclass
class DrugReference:
    """What generated molecules are compared with.

    Attributes:
        name: ``"moses"`` or the dataset name.
        novelty: Training SMILES for novelty (``None``: novelty not computed).
        novelty_source: Where they came from (for the report).
        moses: MOSES test-sample statistics: ``smiles``, ``fcd`` (mu/sigma or ``None``), ``frag``,
            ``scaf`` (counters), ``fps`` (fingerprints).
        properties: Reference descriptor samples (:func:`molecule_properties`).
        properties_source: Which molecules the descriptors come from.
        info: Sizes, seeds and versions, for the JSON output.
    """

    name: str
    novelty: set[str] | None
    novelty_source: str
    moses: dict[str, Any]
    properties: dict[str, Any]
    properties_source: str
    info: dict[str, Any] = field(default_factory=dict)


def _moses_test_stats(n: int, seed: int, cache_dir: Path | None) -> dict[str, Any]:
    """Statistics of a seeded sample of the MOSES test set, cached as ``.npz`` (FCD, counters, props)."""
    import rdkit

    tag = f"n{n}_seed{seed}_v{_CACHE_VERSION}_rdkit{rdkit.__version__}"
    path = None if cache_dir is None else Path(cache_dir) / f"moses_test_{tag}.npz"
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            smiles = [str(s) for s in z["smiles"]]
            fcd = {"mu": z["fcd_mu"], "sigma": z["fcd_sigma"]} if "fcd_mu" in z else None
            frag = Counter(json.loads(str(z["frag"])))
            scaf = Counter(json.loads(str(z["scaf"])))
            props = {k: z[f"prop_{k}"] for k in [*PROPERTIES, "ring_sizes"]}
    else:
        with BlockLogs():
            sample = _sample(read_moses_smiles("test"), n, seed)
            mols = moses_metrics.to_mols(sample)
            smiles = [moses_metrics.canonical_smiles(m) for m in mols]
            fcd = moses_metrics.fcd_stats(smiles) if moses_metrics.FCD_AVAILABLE else None
            frag = moses_metrics.fragment_counts(mols)
            scaf = moses_metrics.scaffold_counts(mols)
            props = molecule_properties(mols)
        if path is not None:
            from moldiff.io import atomic_write

            arrays = {"smiles": np.asarray(smiles), "frag": np.asarray(json.dumps(frag)),
                      "scaf": np.asarray(json.dumps(scaf))}
            arrays.update({f"prop_{k}": v for k, v in props.items()})
            if fcd is not None:
                arrays.update(fcd_mu=fcd["mu"], fcd_sigma=fcd["sigma"])
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb") as fh:
                np.savez_compressed(fh, **arrays)
    with BlockLogs():
        fps = moses_metrics.fingerprints(moses_metrics.to_mols(smiles))
    if fcd is None and moses_metrics.FCD_AVAILABLE:  # cache written without fcd installed
        fcd = moses_metrics.fcd_stats(smiles)
    return {"smiles": smiles, "fcd": fcd, "frag": frag, "scaf": scaf, "fps": fps, "properties": props}


def load_reference(name: str, data_root: str | Path, n_test: int | None = 10_000, seed: int = 0,
                   cache: bool = True) -> DrugReference:
    """The drug-like reference ``name``: ``"moses"`` or a dataset directory ``<data_root>/<name>/``.

    * ``moses``: novelty against the MOSES train SMILES as stored (MOSES's own rule), descriptor
      distributions against the MOSES test sample.
    * a built dataset (``moldiff data build``): novelty against its ``train_smiles.txt.gz``,
      descriptor distributions against (a sample of up to ``n_test`` of) those training SMILES.

    A dataset built as ``data/moses/`` (``moldiff data build --moses train --name moses``) is used
    as a built dataset. MOSES metrics are always against a seeded sample of ``n_test`` MOSES test molecules (``None`` or
    0: all 176,074; MOSES uses all of them), cached under ``<data_root>/.build/moses_reference/``.

    Raises:
        ValueError: Unknown name (one line naming what is allowed) or MOSES not installed.
    """
    data_root = Path(data_root)
    dataset_dir = data_root / name
    train_file = dataset_dir / REFERENCE_FILENAME
    if name != "moses" and not train_file.is_file():
        raise ValueError(f"unknown reference {name!r}: use 'qm9', a SMILES file, 'moses', or a dataset built "
                         f"with 'moldiff data build' (no {train_file})")
    cache_dir = data_root / ".build" / "moses_reference" if cache else None
    stats = _moses_test_stats(n_test or 0, seed, cache_dir)
    n_ref = len(stats["smiles"])
    if name == "moses" and not train_file.is_file():  # a dataset built under the name "moses" wins
        novelty = set(read_moses_smiles("train"))
        novelty_source = "MOSES train SMILES (as stored, 1.58 M)"
        props, props_source = stats["properties"], f"MOSES test sample ({n_ref})"
    else:
        novelty = load_reference_smiles(train_file)
        novelty_source = f"{name} training SMILES ({len(novelty)})"
        with BlockLogs():
            train = moses_metrics.to_mols(_sample(sorted(novelty), n_test, seed))
            props = molecule_properties(train)
        props_source = f"{name} training molecules ({len(train)})"
    info = {"moses_test_sample": n_ref, "seed": seed, "fcd_available": stats["fcd"] is not None,
            "sa_score_available": druglike.SA_SCORE_AVAILABLE}
    return DrugReference(name, novelty, novelty_source, stats, props, props_source, info)


# ---------------------------------------------------------------------------------- molecules
def _own_bond_mol(rec: Any) -> tuple[Chem.Mol | None, str | None]:
    """The record's molecule with its own bonds and formal charges, sanitised, or ``(None, reason)``."""
    return validity.own_bond_mol(rec.symbols, rec.pos, rec.bonds, rec.formal_charges)


def _n_frags(mol: Chem.Mol | None) -> int:
    return 0 if mol is None else len(Chem.GetMolFrags(mol))


def _score_one(rec: Any, row_edm: dict[str, Any]) -> tuple[dict[str, Any], Chem.Mol | None]:
    row: dict[str, Any] = {"name": rec.name, "n_atoms": len(rec.symbols),
                           "has_bonds": rec.bonds is not None and rec.error is None,
                           "valid_edm": bool(row_edm["valid"]), "connected_edm": bool(row_edm["valid_connected"])}
    own = perceived = None
    reason = rec.error
    if rec.error is None:
        if row["has_bonds"]:
            own, reason = _own_bond_mol(rec)
            row["valid_bonds"], row["connected_bonds"] = own is not None, _n_frags(own) == 1
        charge = int(sum(rec.formal_charges)) if rec.formal_charges else 0
        perceived, why = validity.perceive_bonds_rdkit(rec.symbols, rec.pos, charge=charge)
        reason = reason or why
    row["valid_rdkit"], row["connected_rdkit"] = perceived is not None, _n_frags(perceived) == 1
    if row["has_bonds"]:
        primary, method = own, "bonds"
    elif perceived is not None:
        primary, method = perceived, "rdkit"
    else:
        primary, method = None, "edm"
    row["method"] = method
    if method == "edm":
        row["valid"], row["connected"] = row["valid_edm"], row["connected_edm"]
        row["smiles"] = moses_metrics.canonical_smiles(row_edm["smiles"]) if row["valid"] else None
    else:
        row["valid"], row["connected"] = primary is not None, _n_frags(primary) == 1
        row["smiles"] = None
        if primary is not None:
            frag, _ = validity.largest_fragment(primary)
            row["smiles"] = moses_metrics.canonical_smiles(frag)
    row["valid"] = row["valid"] and row["smiles"] is not None
    row["valid_connected"] = row["valid"] and row["connected"]
    row["reason"] = None if row["valid_connected"] else (reason or ("disconnected" if row["valid"] else "invalid"))
    return row, primary


def benchmark_molecules(records: Sequence[Any], reference: DrugReference, posebusters: bool = True,
                        strain: bool = True, workers: int = 1) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score molecules against ``reference`` (see the module docstring).

    Args:
        records: :class:`moldiff.io.MoleculeRecord` s (``read_molecules(path, strict=False)``).
        reference: From :func:`load_reference`.
        posebusters: Run the PoseBusters ``mol_fast`` tests.
        strain: Compute the MMFF strain energy.
        workers: Processes for the EDM part.

    Returns:
        ``(table, summary)``: one row per record (input order) and the pooled metrics.
    """
    from moldiff.evaluation.report import evaluate_molecules

    edm_table, _ = evaluate_molecules(records, workers=workers)
    rows, prim = [], []
    with BlockLogs(), validity.quiet_stderr():
        for rec, row_edm in zip(records, edm_table.to_dict("records"), strict=True):
            row, mol = _score_one(rec, row_edm)
            rows.append(row)
            prim.append(mol)
        valid_frags = []
        for row in rows:
            if row["valid"]:
                frag = Chem.MolFromSmiles(row["smiles"])
                valid_frags.append(frag)
                props = molecule_properties([frag])
                row.update({k: float(props[k][0]) for k in PROPERTIES})
                row["ring_sizes"] = " ".join(map(str, props["ring_sizes"]))
        if posebusters:
            for row, res in zip(rows, geometry.check_posebusters(prim), strict=True):
                row["pb_pass"] = bool(res["results"].get("pb_pass", False))
                row.update({c: res["results"].get(c) for c in geometry.POSEBUSTERS_COLUMNS})
        if strain:
            for row, mol in zip(rows, prim, strict=True):
                res = geometry.check_strain(mol)["results"] if mol is not None else None
                row["strain"] = np.nan if res is None else res["mmff_energy"] - res["mmff_energy_relaxed"]
                row["strain_restrained"] = np.nan if res is None else res["mmff_strain"]
    table = pd.DataFrame(rows)
    return table, summarize_drugs(table, reference, valid_frags)


def _frac(table: pd.DataFrame, col: str, where: pd.Series | None = None) -> float:
    if col not in table or not len(table):
        return float("nan")
    values = table[col] if where is None else table.loc[where, col]
    return float(values.fillna(False).astype(bool).mean()) if len(values) else float("nan")


def summarize_drugs(table: pd.DataFrame, reference: DrugReference,
                    valid_mols: Sequence[Chem.Mol] | None = None) -> dict[str, Any]:
    """Pooled metrics of a :func:`benchmark_molecules` table (keys in :data:`SUMMARY_LABELS` order)."""
    n = len(table)
    has_bonds = table["has_bonds"].astype(bool) if n else pd.Series(dtype=bool)
    valid_smiles = table.loc[table["valid"].astype(bool), "smiles"].tolist() if n else []
    if valid_mols is None:
        valid_mols = moses_metrics.to_mols(valid_smiles)
    s: dict[str, Any] = {"num_molecules": n, "with_bonds": float(has_bonds.mean()) if n else float("nan")}
    if n and has_bonds.any():
        s["validity_bonds"] = _frac(table, "valid_bonds", has_bonds)
        s["validity_connected_bonds"] = float((table.loc[has_bonds, "valid_bonds"].astype(bool)
                                               & table.loc[has_bonds, "connected_bonds"].astype(bool)).mean())
    s["validity_edm"] = _frac(table, "valid_edm")
    s["validity_connected_edm"] = _frac(table, "connected_edm")
    s["validity_rdkit"] = _frac(table, "valid_rdkit")
    s["validity_connected_rdkit"] = float((table["valid_rdkit"].astype(bool)
                                           & table["connected_rdkit"].astype(bool)).mean()) if n else float("nan")
    s["validity"] = _frac(table, "valid")
    s["validity_connected"] = _frac(table, "valid_connected")
    s["uniqueness"] = validity.uniqueness(valid_smiles)
    s["novelty"] = (validity.novelty(valid_smiles, reference.novelty)
                    if reference.novelty is not None and valid_smiles else float("nan"))
    ref = reference.moses
    with BlockLogs():
        fps = moses_metrics.fingerprints(valid_mols)
        s["fcd"] = (moses_metrics.fcd(valid_smiles, ref["fcd"])
                    if ref["fcd"] is not None and len(valid_smiles) >= 2 else float("nan"))
        s["snn"] = moses_metrics.snn(fps, ref["fps"])
        s["frag"] = moses_metrics.cos_similarity(ref["frag"], moses_metrics.fragment_counts(valid_mols))
        s["scaf"] = moses_metrics.cos_similarity(ref["scaf"], moses_metrics.scaffold_counts(valid_mols))
        s["intdiv1"] = moses_metrics.internal_diversity(fps, 1)
        s["intdiv2"] = moses_metrics.internal_diversity(fps, 2)
    for k in PROPERTIES:
        gen = table[k].to_numpy(dtype=np.float64) if k in table else np.zeros(0)
        s[f"mean_{k}"] = float(np.nanmean(gen)) if np.isfinite(gen).any() else float("nan")
        s[f"w1_{k}"] = moses_metrics.wasserstein(gen, reference.properties[k])
    s["w1_ring_size"] = moses_metrics.wasserstein(_ring_sizes(table), reference.properties["ring_sizes"])
    if "pb_pass" in table:
        s["posebusters_pass"] = _frac(table, "pb_pass")
        s["posebusters_pass_valid"] = float("nan")
        if n:
            valid = table["valid"].astype(bool)
            s["posebusters_pass_valid"] = _frac(table, "pb_pass", valid)
            # Which checks the valid molecules fail (a molecule can fail several): where to improve.
            for c in geometry.POSEBUSTERS_COLUMNS:
                if c in table and valid.any():
                    s[f"posebusters_fail_{c[3:]}"] = float((table.loc[valid, c] == False).mean())  # noqa: E712
    if "strain" in table:
        strain = table["strain"].to_numpy(dtype=np.float64)
        ok = np.isfinite(strain)
        s["median_strain"] = float(np.median(strain[ok])) if ok.any() else float("nan")
        rs = table["strain_restrained"].to_numpy(dtype=np.float64)
        s["median_strain_restrained"] = float(np.nanmedian(rs)) if np.isfinite(rs).any() else float("nan")
        s["strain_typed"] = float(ok.mean()) if n else float("nan")
    return s


def _ring_sizes(table: pd.DataFrame) -> np.ndarray:
    if "ring_sizes" not in table:
        return np.zeros(0)
    return np.asarray([int(x) for v in table["ring_sizes"].dropna() for x in str(v).split()], dtype=np.float64)


# ---------------------------------------------------------------------------------- reporting
#: Row labels; ``%`` rows are fractions shown as percentages.
SUMMARY_LABELS: dict[str, tuple[str, str]] = {
    "num_molecules": ("molecules", "int"),
    "with_bonds": ("with bonds in the file", "%"),
    "validity_bonds": ("valid, own bonds", "%"),
    "validity_connected_bonds": ("valid & connected, own bonds", "%"),
    "validity_edm": ("valid, EDM tables (largest frag.)", "%"),
    "validity_connected_edm": ("valid & connected, EDM tables", "%"),
    "validity_rdkit": ("valid, rdDetermineBonds", "%"),
    "validity_connected_rdkit": ("valid & connected, rdDetermineBonds", "%"),
    "validity": ("valid (primary)", "%"),
    "validity_connected": ("valid & connected (primary)", "%"),
    "uniqueness": ("unique (of valid)", "%"),
    "novelty": ("novel (of unique valid)", "%"),
    "fcd": ("FCD to MOSES test (lower better)", "f3"),
    "snn": ("SNN to MOSES test", "f3"),
    "frag": ("Frag similarity", "f3"),
    "scaf": ("Scaf similarity", "f3"),
    "intdiv1": ("IntDiv1", "f3"),
    "intdiv2": ("IntDiv2", "f3"),
    **{f"mean_{k}": (f"mean {v}", "f3") for k, v in PROPERTIES.items()},
    **{f"w1_{k}": (f"W1 {v}", "f3") for k, v in PROPERTIES.items()},
    "w1_ring_size": ("W1 ring size", "f3"),
    "posebusters_pass": ("PoseBusters mol checks passed", "%"),
    "posebusters_pass_valid": ("PoseBusters passed (of valid)", "%"),
    **{f"posebusters_fail_{c[3:]}": (f"  fails {c[3:].replace('_', ' ')} (of valid)", "%")
       for c in geometry.POSEBUSTERS_COLUMNS},
    "median_strain": ("median MMFF strain (kcal/mol)", "f2"),
    "median_strain_restrained": ("median MMFF strain, restrained", "f2"),
    "strain_typed": ("MMFF-typed molecules", "%"),
}


def _fmt(key: str, v: Any) -> str:
    kind = SUMMARY_LABELS.get(key, (key, "f3"))[1]
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if kind == "int":
        return str(int(v))
    if kind == "%":
        return f"{100 * v:.1f} %"
    return f"{v:.2f}" if kind == "f2" else f"{v:.3f}"


def format_drug_summary(summary: dict[str, Any]) -> str:
    """Two-column text table of a summary (the CLI output)."""
    lines = [f"{'metric':<40}{'value':>10}"]
    for k, v in summary.items():
        if k in SUMMARY_LABELS:
            lines.append(f"{SUMMARY_LABELS[k][0]:<40}{_fmt(k, v):>10}")
    return "\n".join(lines)


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table, one column per labelled summary (e.g. ``{"data (moses2k)": summary}``)."""
    keys = [k for k in SUMMARY_LABELS if any(k in s for s in rows.values())]
    out = ["| metric | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    for k in keys:
        out.append(f"| {SUMMARY_LABELS[k][0]} | " + " | ".join(_fmt(k, s.get(k)) for s in rows.values()) + " |")
    return "\n".join(out)


def table_properties(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Descriptor samples of a :func:`benchmark_molecules` table (valid molecules), for plotting."""
    out = {k: table[k].to_numpy(dtype=np.float64) if k in table else np.zeros(0) for k in PROPERTIES}
    out["ring_sizes"] = _ring_sizes(table)
    return out


def plot_distributions(series: dict[str, dict[str, np.ndarray]], reference: dict[str, np.ndarray],
                       path: str | Path, reference_label: str = "reference") -> Path:
    """Histogram overlays (densities) of the descriptors, each generated set against the reference.

    Args:
        series: label -> descriptor samples (:func:`table_properties`).
        reference: Reference samples (:attr:`DrugReference.properties`).
        path: PNG file to write.
        reference_label: Legend entry of the reference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*PROPERTIES, "ring_sizes"]
    titles = {**PROPERTIES, "ring_sizes": "ring size (all rings)"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, key in zip(axes.ravel(), keys, strict=True):
        ref = np.asarray(reference[key], dtype=np.float64)
        ref = ref[np.isfinite(ref)]
        pooled = np.concatenate([ref, *[np.asarray(v[key], dtype=np.float64) for v in series.values()]])
        pooled = pooled[np.isfinite(pooled)]
        if key in ("n_rings", "ring_sizes"):
            bins = np.arange(pooled.min() - 0.5, pooled.max() + 1.5) if len(pooled) else 10
        else:
            bins = np.linspace(*np.percentile(pooled, [0.5, 99.5]), 40) if len(pooled) else 10
        ax.hist(ref, bins=bins, density=True, color="0.6", alpha=0.6, label=reference_label)
        for label, values in series.items():
            v = np.asarray(values[key], dtype=np.float64)
            ax.hist(v[np.isfinite(v)], bins=bins, density=True, histtype="step", linewidth=1.8, label=label)
        ax.set_title(titles[key])
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
