"""RDKit validity, SMILES, uniqueness and novelty as EDM defines them, plus stricter variants.

EDM (``qm9/rdkit_functions.py``): the molecule built from EDM bond orders is valid iff
``Chem.SanitizeMol`` succeeds on the **whole** molecule; only then is the largest fragment (by atom
count, explicit H included, first one on ties) taken and its canonical SMILES (explicit ``[H]``)
stored. Disconnected molecules therefore count as valid, and under-bonded atoms pass because RDKit
completes them with implicit hydrogens. Uniqueness is ``#distinct / #valid`` over these SMILES and
novelty is ``#(distinct valid SMILES not in the reference) / #distinct valid SMILES``.

Beyond EDM: *strict validity* additionally requires a connected bond graph, and
:func:`perceive_bonds_rdkit` gives a second opinion with RDKit's ``rdDetermineBonds`` (xyz2mol,
formal charges allowed).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds

__all__ = [
    "sanitize_smiles",
    "largest_fragment",
    "edm_validity",
    "perceive_bonds_rdkit",
    "own_bond_mol",
    "quiet_stderr",
    "uniqueness",
    "novelty",
]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def sanitize_smiles(mol: Chem.Mol) -> tuple[str | None, str | None]:
    """Sanitise ``mol`` **in place** and return its canonical SMILES (EDM's ``mol2smiles``).

    Args:
        mol: An RDKit molecule (typically from :func:`~moldiff.evaluation.build.build_edm_mol`).

    Returns:
        ``(smiles, None)`` on success, ``(None, reason)`` when sanitisation fails.
    """
    try:
        Chem.SanitizeMol(mol)
    except ValueError as exc:  # MolSanitizeException derives from ValueError, as EDM relies on
        return None, f"sanitization failed: {_first_line(exc)}"
    return Chem.MolToSmiles(mol), None


def own_bond_mol(
    symbols: Sequence[str], pos: np.ndarray, bonds: Iterable[tuple[int, int, float]],
    formal_charges: Sequence[int] | None = None,
) -> tuple[Chem.Mol | None, str | None]:
    """The molecule with its OWN bonds and formal charges (nothing inferred), sanitised.

    Args:
        symbols: Element symbols, length ``n``.
        pos: Coordinates in Å, ``[n, 3]`` (kept as the conformer).
        bonds: ``(i, j, order)`` with orders 1, 2, 3 or 1.5 (aromatic), as in
            :attr:`moldiff.io.Molecule.bonds`.
        formal_charges: ``n`` formal charges (default: all 0).

    Returns:
        ``(mol, None)`` when RDKit sanitisation succeeds, else ``(None, reason)``.
    """
    from moldiff.io import bonded_mol

    codes = []
    for i, j, order in bonds:
        if order not in (1, 2, 3, 1.5):
            return None, f"unsupported bond order {order}"
        codes.append((i, j, 4 if order == 1.5 else int(order)))
    try:
        mol = Chem.Mol(bonded_mol(symbols, pos, codes, formal_charges))
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()
        return None, f"sanitization failed: {text[-1] if text else type(exc).__name__}"
    return mol, None


def largest_fragment(mol: Chem.Mol) -> tuple[Chem.Mol, int]:
    """Largest fragment of a sanitised molecule, as EDM picks it.

    Args:
        mol: A sanitised RDKit molecule.

    Returns:
        ``(fragment, n_fragments)``; the fragment with most atoms (explicit H counted), the first
        one on ties.
    """
    frags = Chem.GetMolFrags(mol, asMols=True)
    if len(frags) == 1:
        return mol, 1
    return max(frags, key=lambda m: m.GetNumAtoms()), len(frags)


def edm_validity(mol: Chem.Mol) -> dict[str, object]:
    """EDM validity of one built molecule (sanitises ``mol`` in place).

    Args:
        mol: Molecule from :func:`~moldiff.evaluation.build.build_edm_mol`.

    Returns:
        Dict with ``valid`` (bool), ``smiles`` (largest fragment's SMILES or ``None``),
        ``n_fragments`` (connected components of the bond graph), ``connected`` (bool) and
        ``reason`` (``None`` when valid).

    >>> from moldiff.evaluation.build import build_edm_mol
    >>> edm_validity(build_edm_mol(["O", "H", "H"], np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]])))["smiles"]
    '[H]O[H]'
    """
    n_frags = len(Chem.GetMolFrags(mol, sanitizeFrags=False))
    smiles, reason = sanitize_smiles(mol)
    if smiles is None:
        return {"valid": False, "smiles": None, "n_fragments": n_frags, "connected": n_frags == 1,
                "reason": reason}
    if n_frags > 1:
        frag, _ = largest_fragment(mol)
        smiles = Chem.MolToSmiles(frag)
    return {"valid": True, "smiles": smiles, "n_fragments": n_frags, "connected": n_frags == 1,
            "reason": None}


def _xyz_block(symbols: Sequence[str], pos: np.ndarray) -> str:
    lines = [str(len(symbols)), ""]
    coords = np.asarray(pos, dtype=np.float64).tolist()
    lines += [f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(symbols, coords, strict=True)]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level writes to stderr (YAeHMOP prints ``!!! Warning !!!`` lines) inside the block."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real file descriptor (e.g. captured)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


#: Atoms closer than this (Å) make :func:`perceive_bonds_rdkit` report an overlap instead of calling
#: RDKit (whose Hückel step crashes on them); the shortest chemical bond, H2, is 0.74 Å.
MIN_ATOM_DISTANCE = 0.3


def perceive_bonds_rdkit(
    symbols: Sequence[str], pos: np.ndarray, charge: int = 0, use_hueckel: bool = True
) -> tuple[Chem.Mol | None, str | None]:
    """Bond perception with RDKit's ``rdDetermineBonds.DetermineBonds`` (xyz2mol), a second opinion.

    Connectivity comes from extended-Hückel bond orders (``useHueckel=True``): the default
    covalent-radius rule connects atoms across strained small rings and fails on about 6 % of QM9;
    the Hückel variant perceives all of a 1,000-molecule QM9 sample. Bond orders and formal charges
    then come from xyz2mol (charged fragments allowed). YAeHMOP writes warnings to the C-level
    stderr; wrap calls in :func:`quiet_stderr` to hide them.

    Args:
        symbols: Element symbols, length ``n``.
        pos: Coordinates in Å, ``[n, 3]``.
        charge: Total molecular charge (formal charges on atoms are allowed).
        use_hueckel: Use extended-Hückel connectivity (else covalent radii × 1.3).

    Returns:
        ``(mol, None)`` with a sanitised molecule carrying the input conformer, or ``(None, reason)``.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if len(pos) > 1:
        # Atoms on top of each other (generated molecules have them) crash YAeHMOP's Hückel step with a
        # segmentation fault (RDKit 2025, seen on a sampled molecule with two atoms 0.0007 Å apart);
        # no chemical bond is shorter than H2's 0.74 Å, so such a geometry has no valid bonding anyway.
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        if float(d.min()) < MIN_ATOM_DISTANCE:
            i, j = np.unravel_index(int(np.argmin(d)), d.shape)
            return None, f"atoms {min(i, j) + 1} and {max(i, j) + 1} overlap ({float(d.min()):.3f} Å apart)"
    mol = Chem.MolFromXYZBlock(_xyz_block(symbols, pos))
    if mol is None:
        return None, "rdkit could not read coordinates"
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=charge, useHueckel=use_hueckel)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError) as exc:
        return None, f"rdDetermineBonds failed: {_first_line(exc)}"
    return mol, None


def uniqueness(valid_smiles: Sequence[str]) -> float:
    """Fraction of distinct SMILES among the valid molecules' SMILES (NaN when there are none).

    >>> uniqueness(["[H]O[H]", "[H]O[H]", "[H]C#N"])
    0.6666666666666666
    """
    if len(valid_smiles) == 0:
        return float("nan")
    return len(set(valid_smiles)) / len(valid_smiles)


def novelty(valid_smiles: Iterable[str], reference: Iterable[str] | set[str]) -> float:
    """EDM novelty: share of distinct valid SMILES that are absent from ``reference``.

    Args:
        valid_smiles: SMILES of the valid molecules (duplicates allowed).
        reference: Reference SMILES, e.g. the training split built EDM's way.

    Returns:
        A fraction in [0, 1] (NaN when there are no valid SMILES).

    >>> novelty(["[H]O[H]", "[H]C#N", "[H]C#N"], {"[H]O[H]"})
    0.5
    """
    distinct = set(valid_smiles)
    if not distinct:
        return float("nan")
    ref = reference if isinstance(reference, (set, frozenset)) else set(reference)
    return len(distinct - ref) / len(distinct)
