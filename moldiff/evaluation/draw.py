"""Molecule grid pictures for people to look at (RDKit 2D depictions of the scored molecules)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from rdkit import Chem
from rdkit.Chem import Draw
from rdkit.rdBase import BlockLogs


def draw_grid(table: pd.DataFrame, path: str | Path, max_mols: int = 24, per_row: int = 6) -> int:
    """Draw the first ``max_mols`` valid molecules of an evaluation table as a PNG grid.

    Each cell shows the 2D depiction of the molecule's SMILES (largest fragment, hydrogens
    implicit) with a legend ``#row  stable|unstable``. Invalid molecules are skipped. Molecules that
    carry their own bonds (a bond-channel model's; column ``smiles_own_bonds``) are drawn with those
    bonds, valid by them, and labelled ``connected|fragments`` (EDM's stability counts hydrogens,
    which a heavy-atom model does not generate).

    Args:
        table: per-molecule table from :func:`moldiff.evaluation.report.evaluate_molecules`
            (columns ``smiles``, ``valid``, ``mol_stable``).
        path: output ``.png`` path (written atomically).
        max_mols: most molecules drawn.
        per_row: molecules per grid row.

    Returns:
        The number of molecules drawn.
    """
    mols, legends = [], []
    _quiet = BlockLogs()  # noqa: F841 - silences RDKit's per-molecule warnings while alive
    own = "smiles_own_bonds" in table  # molecules with their own bonds: drawn as bonded, "valid" by them
    for i, row in table.iterrows():
        valid, smiles = (row.get("valid_own_bonds"), row.get("smiles_own_bonds")) if own else (row.get("valid"),
                                                                                               row.get("smiles"))
        if not valid or not isinstance(smiles, str):
            continue
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        mols.append(mol)
        if own:
            legends.append(f"#{i}  {'connected' if '.' not in smiles else 'fragments'}")
        else:
            legends.append(f"#{i}  {'stable' if row.get('mol_stable') else 'unstable'}")
        if len(mols) >= max_mols:
            break
    if not mols:
        raise ValueError("no valid molecule to draw")
    img = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(220, 180), legends=legends)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return len(mols)
