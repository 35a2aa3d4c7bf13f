"""Input normalisation and RDKit molecule building from EDM bond orders.

Every public entry point of :mod:`moldiff.evaluation` accepts any mix of

* ``(symbols, pos)`` pairs (``pos`` in Å, shape ``[n, 3]``),
* records with ``symbols``, ``pos`` and optional ``name`` / ``error`` attributes
  (:class:`moldiff.io.Molecule`, the package's one molecule record, which the readers return),
* RDKit molecules with a conformer (atoms taken as they are: implicit hydrogens are not added).

They are normalised to :class:`moldiff.io.Molecule` (symbols as a tuple, ``pos`` float64 ``[n, 3]``,
a name, and ``error``; bonds, formal charges and properties of a record are kept but not used: EDM's
metrics infer bonds from distances). Malformed input (wrong atom count, non-numeric or
non-finite coordinates, unknown element, no conformer) does not raise: the molecule carries an
``error`` string and is scored as unstable and invalid with that reason.

:func:`build_edm_mol` reproduces EDM's ``rdkit_functions.py::build_xae_molecule``: neutral atoms,
explicit hydrogens as graph atoms, one bond per pair with EDM order > 0, no conformer (so no
stereochemistry reaches the SMILES).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from rdkit import Chem
from rdkit.Geometry import Point3D

from moldiff.evaluation.stability import ELEMENTS
from moldiff.io import Molecule

__all__ = ["Molecule", "to_molecule", "to_molecules", "build_edm_mol", "add_conformer", "BOND_TYPES"]

#: RDKit bond type for EDM orders 1, 2, 3 (index 0 unused; EDM never produces aromatic bonds).
BOND_TYPES = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)
_KNOWN = frozenset(ELEMENTS)


def _from_rdkit(mol: Chem.Mol, name: str) -> Molecule:
    symbols = tuple(a.GetSymbol() for a in mol.GetAtoms())
    if mol.HasProp("_Name") and mol.GetProp("_Name"):
        name = mol.GetProp("_Name")
    if mol.GetNumConformers() == 0:
        return Molecule(name, symbols, np.zeros((0, 3)), error="no conformer (3D coordinates) in RDKit molecule")
    return _validated(name, symbols, mol.GetConformer().GetPositions(), None)


def _validated(name: str, symbols: Sequence[Any], pos: Any, error: str | None) -> Molecule:
    """Build a :class:`Molecule`, turning every defect into an ``error`` string."""
    symbols = tuple(str(s) for s in symbols) if symbols is not None else ()
    if error:
        try:
            arr = np.asarray(pos, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.zeros((0, 3))
        return Molecule(name, symbols, arr if arr.ndim == 2 else np.zeros((0, 3)), error=str(error))
    try:
        arr = np.asarray(pos, dtype=np.float64)
    except (TypeError, ValueError):
        return Molecule(name, symbols, np.zeros((0, 3)), error="non-numeric coordinate")
    if arr.ndim != 2 or arr.shape[1] != 3:
        reason = f"coordinates must have shape (n, 3), got {arr.shape}"
        return Molecule(name, symbols, np.zeros((0, 3)), error=reason)
    if arr.shape[0] != len(symbols):
        return Molecule(
            name, symbols, arr, error=f"wrong atom count: {len(symbols)} symbols, {arr.shape[0]} positions"
        )
    if len(symbols) == 0:
        return Molecule(name, symbols, arr, error="empty molecule")
    unknown = sorted({s for s in symbols if s not in _KNOWN})
    if unknown:
        return Molecule(name, symbols, arr, error=f"unknown element {', '.join(unknown)}")
    if not np.isfinite(arr).all():
        return Molecule(name, symbols, arr, error="non-finite coordinate (NaN or inf)")
    return Molecule(name, symbols, arr)


def to_molecule(obj: Any, index: int = 0) -> Molecule:
    """Normalise one input molecule (see the module docstring for accepted forms).

    Args:
        obj: ``(symbols, pos)``, a record with ``symbols``/``pos`` attributes, an RDKit ``Mol`` or a
            :class:`Molecule`.
        index: Position in the input, used as the name when the input has none.

    Returns:
        A :class:`Molecule`; its ``error`` is set when the input is malformed.

    >>> to_molecule((["H", "H"], [[0, 0, 0], [0.74, 0, 0]])).error is None
    True
    >>> to_molecule((["H", "Xx"], [[0, 0, 0], [0.74, 0, 0]])).error
    'unknown element Xx'
    """
    if isinstance(obj, Molecule):  # a record (read from a file, or already normalised): validate, keep the rest
        name = obj.name or str(index)
        norm = _validated(str(name), obj.symbols, obj.pos, obj.error)
        return replace(obj, name=norm.name, symbols=norm.symbols, pos=norm.pos, error=norm.error)
    if isinstance(obj, Chem.Mol):
        return _from_rdkit(obj, str(index))
    if hasattr(obj, "symbols") and hasattr(obj, "pos"):
        name = getattr(obj, "name", None) or str(index)
        return _validated(str(name), obj.symbols, obj.pos, getattr(obj, "error", None))
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _validated(str(index), obj[0], obj[1], None)
    return Molecule(str(index), (), np.zeros((0, 3)), error=f"unsupported input type {type(obj).__name__}")


def to_molecules(objs: Sequence[Any]) -> list[Molecule]:
    """Normalise a sequence of inputs with :func:`to_molecule` (names default to input positions)."""
    return [to_molecule(o, i) for i, o in enumerate(objs)]


def build_edm_mol(symbols: Sequence[str], orders: np.ndarray) -> Chem.RWMol:
    """RDKit molecule from EDM bond orders, as EDM's ``build_xae_molecule`` builds it.

    Args:
        symbols: Element symbols, length ``n``.
        orders: Symmetric bond-order matrix ``[n, n]`` (0..3), e.g. from
            :func:`~moldiff.evaluation.stability.bond_order_matrix`.

    Returns:
        An unsanitised ``RWMol``: neutral atoms, explicit H atoms, no conformer.
    """
    mol = Chem.RWMol()
    for s in symbols:
        mol.AddAtom(Chem.Atom(s))
    ii, jj = np.nonzero(np.triu(orders, 1))
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        mol.AddBond(i, j, BOND_TYPES[int(orders[i, j])])
    return mol


def add_conformer(mol: Chem.Mol, pos: np.ndarray) -> Chem.Mol:
    """Attach ``pos`` (Å, ``[n, 3]``) as the molecule's 3D conformer (in place) and return ``mol``."""
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, (x, y, z) in enumerate(np.asarray(pos, dtype=np.float64).tolist()):
        conf.SetAtomPosition(i, Point3D(x, y, z))
    conf.Set3D(True)
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)
    return mol
