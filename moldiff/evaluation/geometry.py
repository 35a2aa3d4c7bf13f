"""Geometry checks: PoseBusters' molecule tests and an MMFF strain energy.

* :func:`check_posebusters` runs PoseBusters (Buttenschoen et al. 2024) with its ``mol_fast``
  configuration: the ``mol`` tests (sanitisation, InChI, connectivity, radicals, bond lengths, bond
  angles and internal clashes against RDKit distance-geometry bounds, aromatic-ring flatness,
  non-aromatic ring non-flatness, double-bond flatness) without the ETKDG-ensemble energy ratio, which
  :func:`check_strain` replaces with a cheaper local strain energy.
* :func:`check_strain`: MMFF94 energy after a restrained relaxation (heavy atoms kept within
  ``max_displacement`` Å of the input by flat-bottom restraints, hydrogens free) minus the energy of
  the unrestrained local minimum reached from there, in kcal/mol.

Both need a molecule whose bond graph is chemically right and which carries the input conformer; the
report uses the ``rdDetermineBonds`` molecule (EDM's tables misread aromatic rings) and falls back to
the sanitised EDM molecule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdForceFieldHelpers

__all__ = ["check_posebusters", "check_strain", "POSEBUSTERS_CONFIG", "POSEBUSTERS_COLUMNS"]

#: PoseBusters configuration used (the ``mol`` tests without the energy-ratio ensemble).
POSEBUSTERS_CONFIG = "mol_fast"
#: Output columns (PoseBusters' names, lower-cased, prefixed ``pb_``).
POSEBUSTERS_COLUMNS: tuple[str, ...] = (
    "pb_sanitization",
    "pb_inchi_convertible",
    "pb_all_atoms_connected",
    "pb_no_radicals",
    "pb_bond_lengths",
    "pb_bond_angles",
    "pb_internal_steric_clash",
    "pb_aromatic_ring_flatness",
    "pb_non-aromatic_ring_non-flatness",
    "pb_double_bond_flatness",
)


def _reopen_rdkit_log_stream() -> None:
    """Point RDKit's Python log handler at the current stderr if its stream was closed.

    Importing PoseBusters routes RDKit's log into Python logging through a handler bound to the
    ``sys.stderr`` of that moment. When that stream is later closed (a redirected or captured
    stderr: notebooks, pytest's capsys), every InChI call raises "I/O operation on closed file"
    and PoseBusters reports valid molecules as not InChI-convertible.
    """
    import sys

    import rdkit

    handler = getattr(rdkit, "log_handler", None)
    stream = getattr(handler, "stream", None)
    if handler is not None and getattr(stream, "closed", False):
        handler.stream = sys.stderr  # not setStream(): it flushes the old, closed stream first


def check_posebusters(mols: Sequence[Chem.Mol | None]) -> list[dict[str, Any]]:
    """PoseBusters ``mol_fast`` tests for a list of molecules (one ``bust`` call).

    Args:
        mols: Sanitised molecules with a 3D conformer; ``None`` entries are skipped.

    Returns:
        One ``{"results": {...}, "details": {}}`` per input, in input order. ``results`` maps the
        :data:`POSEBUSTERS_COLUMNS` to booleans plus ``pb_pass`` (all tests passed); entries for
        ``None`` inputs are empty.
    """
    from posebusters import PoseBusters  # heavy import, deferred

    _reopen_rdkit_log_stream()

    idx = [i for i, m in enumerate(mols) if m is not None]
    out: list[dict[str, Any]] = [{"results": {}, "details": {}} for _ in mols]
    if not idx:
        return out
    batch = []
    for i in idx:
        m = Chem.Mol(mols[i])
        m.SetProp("_Name", str(i))
        batch.append(m)
    table = PoseBusters(config=POSEBUSTERS_CONFIG, max_workers=0).bust(batch)
    table = table.drop(columns=[c for c in table.columns if c == "mol_pred_loaded"])
    for (_, name, _), row in zip(table.index, table.itertuples(index=False), strict=True):
        values = {f"pb_{c}": (None if v is None or v is np.nan else bool(v)) for c, v in
                  zip(table.columns, row, strict=True)}
        values["pb_pass"] = all(v is True for v in values.values())
        out[int(name)]["results"] = values
    return out


def _mmff(mol: Chem.Mol) -> Any:
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
    if props is None:
        return None
    return rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)


def check_strain(
    mol: Chem.Mol, max_displacement: float = 0.3, force_constant: float = 100.0, max_iters: int = 2000
) -> dict[str, Any]:
    """MMFF94 strain energy of the input conformation after a restrained relaxation.

    Args:
        mol: Sanitised molecule with explicit hydrogens and a 3D conformer (Å).
        max_displacement: Flat-bottom restraint radius for heavy atoms, Å.
        force_constant: Restraint force constant, kcal/(mol·Å²).
        max_iters: Iteration cap of each minimisation.

    Returns:
        ``{"results": {"mmff_energy", "mmff_energy_restrained", "mmff_energy_relaxed", "mmff_strain"},
        "details": {"converged", "reason"}}``; energies in kcal/mol, NaN when MMFF cannot type the
        molecule. ``mmff_strain = mmff_energy_restrained - mmff_energy_relaxed`` (≥ 0 up to
        convergence).
    """
    nan = float("nan")
    empty = {"mmff_energy": nan, "mmff_energy_restrained": nan, "mmff_energy_relaxed": nan,
             "mmff_strain": nan}
    work = Chem.Mol(mol)
    ff = _mmff(work)
    if ff is None:
        return {"results": empty, "details": {"converged": False, "reason": "MMFF cannot type molecule"}}
    e_input = ff.CalcEnergy()
    for atom in work.GetAtoms():
        if atom.GetAtomicNum() > 1:
            ff.MMFFAddPositionConstraint(atom.GetIdx(), max_displacement, force_constant)
    ff.Minimize(maxIts=max_iters)
    e_restrained = _mmff(work).CalcEnergy()  # energy without the restraint terms
    ff_free = _mmff(work)
    converged = ff_free.Minimize(maxIts=max_iters) == 0
    e_relaxed = ff_free.CalcEnergy()
    results = {"mmff_energy": float(e_input), "mmff_energy_restrained": float(e_restrained),
               "mmff_energy_relaxed": float(e_relaxed), "mmff_strain": float(e_restrained - e_relaxed)}
    return {"results": results, "details": {"converged": converged, "reason": None}}
