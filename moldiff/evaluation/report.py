"""Registry of checks → per-molecule pandas table + summary dict (the PoseBusters pattern).

:func:`evaluate_molecules` is the entry point. The ``edm`` check (stability, validity, SMILES,
connectivity; always run) is vectorised over molecules of equal size; the other checks are optional
and named in :data:`CHECKS`. Rows keep the input order; malformed inputs get a row with a ``reason``.

Molecules that carry their own bonds (SDF records with a bond block: :attr:`moldiff.io.Molecule.bonds`)
are also scored with those bonds (:func:`_own_bond_columns`): stability with EDM's valence table
and RDKit validity. These are second numbers next to EDM's distance-rule headline, never instead of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from moldiff.evaluation import druglike, geometry, validity
from moldiff.evaluation.build import Molecule, add_conformer, build_edm_mol, to_molecules
from moldiff.evaluation.stability import ELEMENTS, batch_stability, check_stability_bonds, element_indices

__all__ = ["CHECKS", "DEFAULT_CHECKS", "evaluate_molecules", "summarize", "SUMMARY_KEYS", "jsonable",
           "format_summary", "OWN_BOND_KEYS"]

#: Available checks and what each adds (see docs/metrics.md). ``edm`` is always run.
CHECKS: dict[str, str] = {
    "edm": "EDM atom/molecule stability, validity, SMILES, connectivity, strict validity",
    "rdkit_bonds": "second opinion: rdDetermineBonds (xyz2mol, formal charges) validity and agreement",
    "druglike": "QED, SA score, logP, molecular weight, Lipinski violations (valid molecules)",
    "rings": "ring counts by size, aromatic rings (valid molecules)",
    "geometry": "PoseBusters mol_fast tests (bond lengths, angles, clashes, flatness)",
    "strain": "MMFF94 strain energy after a restrained relaxation (kcal/mol)",
}
DEFAULT_CHECKS: tuple[str, ...] = ("edm",)
#: Keys every summary has (fractions in [0, 1]; NaN/None when undefined).
SUMMARY_KEYS: tuple[str, ...] = (
    "num_molecules", "num_malformed", "atom_stability", "mol_stability", "validity",
    "validity_connected", "connected", "uniqueness", "valid_and_unique", "novelty",
)
#: Pairs per vectorised stability block (bounds memory for large molecules).
_PAIR_BUDGET = 4_000_000


def _validate_checks(checks: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(["edm", *checks]))
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(CHECKS)}")
    return names


def _stability_rows(mols: Sequence[Molecule]) -> list[dict[str, Any] | None]:
    """Vectorised EDM stability per molecule; groups molecules of equal size into blocks."""
    out: list[dict[str, Any] | None] = [None] * len(mols)
    by_size: dict[int, list[int]] = {}
    for i, m in enumerate(mols):
        if m.error is None:
            by_size.setdefault(m.n_atoms, []).append(i)
    for n, members in by_size.items():
        step = max(1, _PAIR_BUDGET // (n * n))
        for s in range(0, len(members), step):
            block = members[s:s + step]
            types = np.stack([element_indices(mols[i].symbols) for i in block])
            pos = np.stack([mols[i].pos for i in block])
            stable, valence, orders = batch_stability(types, pos, return_orders=True)
            for k, i in enumerate(block):
                bad = np.flatnonzero(~stable[k])
                out[i] = {
                    "n_stable_atoms": n - len(bad),
                    "mol_stable": len(bad) == 0,
                    "unstable": " ".join(f"{ELEMENTS[types[k, a]]}{valence[k, a]}" for a in bad),
                    "orders": orders[k],
                }
    return out


def _score_chunk(mols: Sequence[Molecule], checks: tuple[str, ...]) -> list[dict[str, Any]]:
    """Score a list of molecules; one row dict per molecule, same order."""
    rows: list[dict[str, Any]] = []
    geometry_mols: list[Chem.Mol | None] = []
    noisy = bool({"rdkit_bonds", "geometry", "strain"} & set(checks))
    with BlockLogs(), (validity.quiet_stderr() if noisy else contextlib.nullcontext()):
        for mol, stab in zip(mols, _stability_rows(mols), strict=True):
            row: dict[str, Any] = {"name": mol.name, "n_atoms": mol.n_atoms, "n_stable_atoms": 0,
                                   "mol_stable": False, "valid": False, "connected": False,
                                   "valid_connected": False, "n_fragments": 0, "smiles": None,
                                   "malformed": mol.error is not None}
            reasons = [mol.error] if mol.error else []
            geo_mol = None
            if stab is not None:
                row["n_stable_atoms"], row["mol_stable"] = stab["n_stable_atoms"], stab["mol_stable"]
                if stab["unstable"]:
                    reasons.append(f"unstable atoms (element+valence): {stab['unstable']}")
                rd = build_edm_mol(mol.symbols, stab["orders"])
                v = validity.edm_validity(rd)
                row.update(valid=v["valid"], connected=v["connected"], n_fragments=v["n_fragments"],
                           smiles=v["smiles"], valid_connected=v["valid"] and v["connected"])
                if v["reason"]:
                    reasons.append(v["reason"])
                if not v["connected"]:
                    reasons.append(f"disconnected ({v['n_fragments']} fragments)")
                geo_mol = _extra_checks(row, mol, rd if v["valid"] else None, checks)
            row["reason"] = "; ".join(reasons) if reasons else None
            if mol.bonds is not None:
                row.update(_own_bond_columns(mol))
            rows.append(row)
            geometry_mols.append(geo_mol)
        if "geometry" in checks:
            for row, res in zip(rows, geometry.check_posebusters(geometry_mols), strict=True):
                row["pb_pass"] = None
                row.update(res["results"])
    return rows


def _own_bond_columns(mol: Molecule) -> dict[str, Any]:
    """Stability and validity of a molecule by its own bonds (file / model bonds, not EDM's rule).

    A malformed molecule or unusable bonds score 0 stable atoms, unstable and invalid, with the
    reason in ``reason_own_bonds`` (the ``reason`` column stays EDM's).
    """
    if mol.error is not None:
        return {"n_stable_atoms_own_bonds": 0, "mol_stable_own_bonds": False, "valid_own_bonds": False,
                "reason_own_bonds": mol.error, "smiles_own_bonds": None}
    reasons = []
    try:
        stable, n_stable, _ = check_stability_bonds(mol.symbols, mol.bonds, mol.formal_charges)
    except ValueError as exc:
        stable, n_stable = False, 0
        reasons.append(str(exc))
    rd, why = validity.own_bond_mol(mol.symbols, mol.pos, mol.bonds, mol.formal_charges)
    if why:
        reasons.append(why)
    smiles = None
    if rd is not None:
        with BlockLogs():
            smiles = Chem.MolToSmiles(Chem.RemoveHs(rd, sanitize=False))
    return {"n_stable_atoms_own_bonds": n_stable, "mol_stable_own_bonds": stable,
            "valid_own_bonds": rd is not None, "reason_own_bonds": "; ".join(reasons) if reasons else None,
            "smiles_own_bonds": smiles}


def _extra_checks(row: dict[str, Any], mol: Molecule, rd: Chem.Mol | None,
                  checks: tuple[str, ...]) -> Chem.Mol | None:
    """Run the optional per-molecule checks into ``row``; return the molecule for geometry checks."""
    needs_perception = {"rdkit_bonds", "geometry", "strain"} & set(checks)
    perceived = None
    if needs_perception:
        perceived, reason = validity.perceive_bonds_rdkit(mol.symbols, mol.pos)
        if "rdkit_bonds" in checks:
            row["valid_rdkit"] = perceived is not None
            row["smiles_rdkit"] = Chem.MolToSmiles(perceived) if perceived is not None else None
            row["bonds_agree"] = bool(
                perceived is not None and rd is not None
                and Chem.MolToSmiles(perceived, isomericSmiles=False)
                == Chem.MolToSmiles(rd, isomericSmiles=False)
            )
            row["reason_rdkit"] = reason
    if rd is not None:
        frag, _ = validity.largest_fragment(rd)
        if "druglike" in checks:
            row.update(druglike.check_druglike(frag)["results"])
        if "rings" in checks:
            row.update(druglike.check_rings(frag)["results"])
    geo = perceived
    if geo is None and rd is not None:
        geo = add_conformer(Chem.Mol(rd), mol.pos)
    if "strain" in checks:
        nan = {"mmff_strain": float("nan")}
        row.update(geometry.check_strain(geo)["results"] if geo is not None else nan)
        row["geometry_bonds"] = None if geo is None else ("rdkit" if perceived is not None else "edm")
    return geo


def _nanmean(values: pd.Series) -> float:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.mean()) if len(v) else float("nan")


def summarize(table: pd.DataFrame, reference_smiles: Iterable[str] | None = None) -> dict[str, Any]:
    """Dataset-level metrics from a per-molecule table (EDM pooling rules).

    Args:
        table: Output table of :func:`evaluate_molecules`.
        reference_smiles: Novelty reference (e.g. training-split SMILES); novelty is NaN without one.

    Returns:
        Dict with at least :data:`SUMMARY_KEYS`; atom stability is pooled over all atoms of all
        molecules, uniqueness is over valid molecules' SMILES, novelty over distinct valid SMILES.
        When some molecules carry their own bonds, also ``atom_stability_own_bonds``,
        ``mol_stability_own_bonds`` and ``validity_own_bonds``, over those molecules only.
    """
    n = len(table)
    frac = (lambda col: float(table[col].astype(bool).mean()) if n else float("nan"))
    valid_smiles = table.loc[table["valid"].astype(bool), "smiles"].tolist() if n else []
    atoms = int(table["n_atoms"].sum()) if n else 0
    summary: dict[str, Any] = {
        "num_molecules": n,
        "num_malformed": int(table["malformed"].sum()) if n else 0,
        "atom_stability": float(table["n_stable_atoms"].sum() / atoms) if atoms else float("nan"),
        "mol_stability": frac("mol_stable"),
        "validity": frac("valid"),
        "validity_connected": frac("valid_connected"),
        "connected": frac("connected"),
        "uniqueness": validity.uniqueness(valid_smiles),
    }
    summary["valid_and_unique"] = summary["validity"] * summary["uniqueness"] if valid_smiles else 0.0
    summary["novelty"] = (validity.novelty(valid_smiles, reference_smiles)
                          if reference_smiles is not None else float("nan"))
    if "mol_stable_own_bonds" in table:
        has = table["mol_stable_own_bonds"].notna()
        if has.any():
            own = table[has]
            own_atoms = int(own["n_atoms"].sum())
            summary["atom_stability_own_bonds"] = (float(own["n_stable_atoms_own_bonds"].sum() / own_atoms)
                                                   if own_atoms else float("nan"))
            summary["mol_stability_own_bonds"] = float(own["mol_stable_own_bonds"].astype(bool).mean())
            summary["validity_own_bonds"] = float(own["valid_own_bonds"].astype(bool).mean())
    if "valid_rdkit" in table:
        summary["validity_rdkit"] = frac("valid_rdkit")
        summary["bond_agreement_rdkit"] = frac("bonds_agree")
    for col in ("qed", "sa_score", "logp", "mol_weight", "lipinski_violations", "n_rings", "mmff_strain"):
        if col in table:
            summary[f"mean_{col}"] = _nanmean(table[col])
    if "pb_pass" in table:
        summary["posebusters_pass"] = frac("pb_pass")
    return summary


def evaluate_molecules(
    molecules: Sequence[Any],
    reference_smiles: Iterable[str] | None = None,
    checks: Sequence[str] = DEFAULT_CHECKS,
    workers: int = 1,
    chunk_size: int = 1000,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score molecules and summarise (EDM protocol plus optional checks).

    Args:
        molecules: Sequence of ``(symbols, pos)`` pairs (``pos`` in Å, ``[n, 3]``),
            :class:`moldiff.io.MoleculeRecord` s or RDKit molecules with a conformer.
        reference_smiles: SMILES for novelty (EDM: training split, whole-molecule SMILES).
        checks: Names from :data:`CHECKS`; ``edm`` is always included.
        workers: Processes; ``1`` runs in this process.
        chunk_size: Molecules per worker task.

    Returns:
        ``(table, summary)``: one row per input in input order (columns in docs/metrics.md), and the
        dict from :func:`summarize`.

    Raises:
        ValueError: For unknown check names (the message lists the allowed ones) or ``workers < 1``.

    >>> table, summary = evaluate_molecules([(["H", "H"], [[0, 0, 0], [0.74, 0, 0]])])
    >>> summary["mol_stability"], table.loc[0, "smiles"]
    (1.0, '[H][H]')
    """
    names = _validate_checks(checks)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    mols = to_molecules(molecules)
    chunks = [mols[i:i + chunk_size] for i in range(0, len(mols), chunk_size)]
    if workers == 1 or len(chunks) <= 1:
        rows = [r for c in chunks for r in _score_chunk(c, names)]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            rows = [r for res in pool.map(_score_chunk, chunks, [names] * len(chunks)) for r in res]
    table = pd.DataFrame(rows, columns=_columns(rows))
    ref = set(reference_smiles) if reference_smiles is not None else None
    return table, summarize(table, ref)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    first = ["name", "n_atoms", "n_stable_atoms", "mol_stable", "valid", "connected", "valid_connected",
             "n_fragments", "smiles", "reason", "malformed"]
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in first))
    return first + extra


def jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    """Copy of a summary with NaN → ``None`` and numpy scalars → Python (strict JSON)."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            v = v.item()
        out[k] = None if isinstance(v, float) and v != v else v
    return out


#: Row labels of :func:`format_summary` that say which validity is which (EDM's counts a cloud of
#: separate atoms as valid when its largest fragment sanitises).
SUMMARY_LABELS: dict[str, str] = {
    "validity": "validity (EDM, largest fragment)",
    "validity_connected": "validity (connected molecule)",
    "connected": "connected (single fragment)",
    "atom_stability_own_bonds": "atom stability, own bonds",
    "mol_stability_own_bonds": "molecule stability, own bonds",
    "validity_own_bonds": "validity, own bonds (RDKit)",
}
#: Summary keys scored with the molecules' own bonds; :func:`format_summary` prints them as a separate
#: block under :data:`OWN_BONDS_HEADER`, after EDM's distance-rule lines.
OWN_BOND_KEYS: tuple[str, ...] = ("atom_stability_own_bonds", "mol_stability_own_bonds", "validity_own_bonds")
OWN_BONDS_HEADER = "by the file's own bonds (the model's bonds for a bond-channel model; not EDM's metric):"


def format_summary(summary: dict[str, Any]) -> str:
    """Small two-column text table of a summary (fractions shown as percentages).

    EDM's validity (largest fragment) is always shown next to the connected validity (the molecule
    is one fragment and sanitises); when they differ a note says how many "valid" molecules are
    disconnected. Stability and validity by the molecules' own bonds (:data:`OWN_BOND_KEYS`, present
    only for molecules read with bonds) follow as a separate last block under :data:`OWN_BONDS_HEADER`.

    >>> print(format_summary({"num_molecules": 2, "validity": 0.5, "validity_connected": 0.5}))
    metric                                  value
    num_molecules                               2
    validity (EDM, largest fragment)      50.00 %
    validity (connected molecule)         50.00 %
    """
    summary = dict(summary)
    if "validity" in summary and "validity_connected" not in summary:
        items = list(summary.items())
        at = [k for k, _ in items].index("validity") + 1
        items.insert(at, ("validity_connected", None))  # never EDM's number alone
        summary = dict(items)
    lines = [f"{'metric':<35}{'value':>10}"]
    own_lines = []
    for k, v in jsonable(summary).items():
        if v is None:
            text = "n/a"
        elif isinstance(v, (bool, int)):
            text = str(v)
        elif k.startswith("mean_"):
            text = f"{v:.3f}"
        else:
            text = f"{100 * v:.2f} %"
        (own_lines if k in OWN_BOND_KEYS else lines).append(f"{SUMMARY_LABELS.get(k, k):<35}{text:>10}")
    valid, connected = summary.get("validity"), summary.get("validity_connected")
    n = summary.get("num_molecules")
    known = all(isinstance(x, float | int) and x == x for x in (valid, connected))
    if isinstance(n, int) and n and known:
        loose = round((valid - connected) * n)
        if loose > 0:
            lines.append(f"note: {loose} of {round(valid * n)} EDM-valid molecules are disconnected (EDM scores "
                         "only their largest fragment)")
    if own_lines:  # after everything EDM's, so the EDM part of the text is unchanged
        lines += [OWN_BONDS_HEADER, *own_lines]
    return "\n".join(lines)
