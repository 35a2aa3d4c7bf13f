"""GEOM-Drugs (Axelrod & Gomez-Bombarelli 2022) from its published RDKit pickles into a stored dataset.

GEOM's ``rdkit_folder/drugs/*.pickle`` hold one molecule each: a dict with ``"smiles"`` and
``"conformers"``, a list of dicts with ``"rd_mol"`` (an RDKit ``Mol`` with hydrogens and one 3D
conformer), ``"boltzmannweight"`` and ``"totalenergy"`` (GFN2-xTB, Hartree). Every conformer
becomes one row with bonds (kekulised) and formal charges; properties are ``energy`` (kcal/mol),
``boltzmann_weight`` and ``conformer`` (rank by weight). Deduplication, the split by molecule and
the files written are those of :func:`moldiff.data.conformers.finalize_dataset`.

**Security**: ``pickle`` runs code from the file while loading it. Only read GEOM files that you
downloaded from its publisher or another source you trust.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.data.conformers import DRUG_ELEMENTS, EmbeddedMolecule, finalize_dataset, molecules_to_arrays

HARTREE_TO_KCAL_MOL = 627.509474


def geom_files(path: str | Path) -> list[Path]:
    """The ``*.pickle`` files of a directory (sorted by name), or the one file given.

    Raises:
        FileNotFoundError: nothing there.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.pickle")) + sorted(path.glob("*.pkl"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.pickle files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def iter_geom_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(source, record)`` for every molecule dict; a pickle may hold one dict or a list of them.

    Only call this on trusted files (see the module docstring).
    """
    for file in geom_files(path):
        try:
            with open(file, "rb") as fh:
                obj = pickle.load(fh)  # noqa: S301 - trusted GEOM files only, as documented
        except Exception as exc:  # noqa: BLE001 - an unreadable file becomes a reject
            yield str(file.name), exc
            continue
        records = obj if isinstance(obj, list) else [obj]
        for k, rec in enumerate(records):
            yield (file.name if len(records) == 1 else f"{file.name}[{k}]"), rec


def geom_molecule(
    row: int,
    record: Any,
    max_conformers: int | None = None,
    elements: tuple[str, ...] = DRUG_ELEMENTS,
    min_heavy_atoms: int = 1,
    max_heavy_atoms: int | None = None,
    max_atoms: int | None = None,
) -> EmbeddedMolecule | str:
    """One GEOM record -> its conformers (by descending Boltzmann weight), or the reason to reject it."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    if isinstance(record, Exception):
        return f"unreadable pickle: {type(record).__name__}"
    if not isinstance(record, dict) or not isinstance(record.get("conformers"), list) or not record["conformers"]:
        return "not a GEOM record (no 'conformers' list)"
    confs = sorted(record["conformers"], key=lambda c: -float(c.get("boltzmannweight", 0.0)))
    if max_conformers is not None:
        confs = confs[:max_conformers]
    with BlockLogs():
        ref = confs[0].get("rd_mol")
        if not isinstance(ref, Chem.Mol) or ref.GetNumConformers() == 0:
            return "conformer without an RDKit molecule"
        mol = Chem.Mol(ref)
        try:
            Chem.SanitizeMol(mol)
            canonical = Chem.MolToSmiles(Chem.RemoveHs(mol))
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Exception:  # noqa: BLE001
            return "RDKit cannot sanitise the molecule"
    if len(Chem.GetMolFrags(mol)) > 1:
        return "disconnected"
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(elements))
    if bad:
        return f"element filter: {','.join(bad)}"
    heavy = mol.GetNumHeavyAtoms()
    if heavy < min_heavy_atoms or (max_heavy_atoms is not None and heavy > max_heavy_atoms):
        return f"size filter: {heavy} heavy atoms"
    if max_atoms is not None and mol.GetNumAtoms() > max_atoms:
        return f"size filter: {mol.GetNumAtoms()} atoms > {max_atoms}"
    codes = {1.0: 1, 2.0: 2, 3.0: 3}
    bonds = []
    for b in mol.GetBonds():
        if b.GetBondTypeAsDouble() not in codes:
            return f"unsupported bond type {b.GetBondType()}"
        i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        bonds.append((i, j, codes[b.GetBondTypeAsDouble()]))
    z = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions, energies, weights = [], [], []
    for c in confs:
        m = c.get("rd_mol")
        if not isinstance(m, Chem.Mol) or m.GetNumConformers() == 0 or [a.GetAtomicNum() for a in m.GetAtoms()] != z:
            continue  # a conformer whose atoms differ from the first one's is skipped
        pos = m.GetConformer().GetPositions()
        if not np.all(np.isfinite(pos)):
            continue
        positions.append(pos)
        energies.append(float(c.get("totalenergy", np.nan)) * HARTREE_TO_KCAL_MOL)
        weights.append(float(c.get("boltzmannweight", np.nan)))
    if not positions:
        return "no usable conformer"
    return EmbeddedMolecule(
        row=row, smiles=canonical, atomic_numbers=z, formal_charges=[a.GetFormalCharge() for a in mol.GetAtoms()],
        bonds=bonds, conformers=np.stack(positions).astype(np.float32), energies=energies,
        extra={"boltzmann_weight": weights},
    )


def import_geom(
    path: str | Path,
    name: str,
    *,
    root: str | Path | None = None,
    max_conformers: int | None = None,
    elements: tuple[str, ...] = DRUG_ELEMENTS,
    min_heavy_atoms: int = 1,
    max_heavy_atoms: int | None = None,
    max_atoms: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Read GEOM-Drugs pickles (trusted files only) into dataset ``name``; return ``(directory, report)``.

    Args:
        path: a directory of ``*.pickle`` files (sorted by name = row order) or one pickle.
        name: dataset name.
        root: data directory.
        max_conformers: keep the conformers with the highest Boltzmann weights (default: all).
        elements: allowed elements.
        min_heavy_atoms: size filter.
        max_heavy_atoms: size filter.
        max_atoms: size filter including hydrogens.
        seed: split seed.
        limit: read only the first ``limit`` molecules.
        overwrite: replace an existing dataset.
    """
    from moldiff.data.datasets import check_dataset_name

    check_dataset_name(name)
    molecules, rejects = [], []
    for row, (source, record) in enumerate(iter_geom_records(path)):
        if limit is not None and row >= limit:
            break
        res = geom_molecule(row, record, max_conformers, elements, min_heavy_atoms, max_heavy_atoms, max_atoms)
        if isinstance(res, str):
            smiles = record.get("smiles", source) if isinstance(record, dict) else source
            rejects.append((row, str(smiles), res))
        else:
            molecules.append(res)
    if not molecules:
        raise ValueError(f"{path}: no usable GEOM molecule ({len(rejects)} rejected)")
    arrays = molecules_to_arrays(molecules, prefix="geom")
    target, report = finalize_dataset(
        arrays, rejects, name, root=root, seed=seed, overwrite=overwrite,
        provenance={"source": f"GEOM-Drugs RDKit pickles: {Path(path).resolve()}",
                    "num_inputs": len(molecules) + len(rejects), "max_conformers": max_conformers,
                    "energy": "GEOM totalenergy (GFN2-xTB) in kcal/mol"},
    )
    return target, {"inputs": len(molecules) + len(rejects), **report}
