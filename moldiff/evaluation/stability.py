"""Atom and molecule stability exactly as in EDM (Hoogeboom et al. 2022).

EDM (``qm9/bond_analyze.py::get_bond_order`` and ``qm9/analyze.py::check_stability``) assigns a bond
order to **every** pair of atoms from tabulated bond lengths (pm) plus margins of 10 / 5 / 3 pm for
single / double / triple bonds, with strict ``<`` comparisons, and calls an atom stable iff the sum of
its bond orders equals a neutral allowed valence (H 1, C 4, N 3, O 2, F 1, ...). A molecule is stable
iff all of its atoms are. Aromatic orders and formal charges are never used.

:func:`check_stability_bonds` applies the same valence table to GIVEN bonds (a file's own bonds, a
bond-channel model's bonds), as MiDi / EQGAT-diff report it; that is a second number, not EDM's.

Numerics follow EDM: distances are computed in float32 from float32 coordinates (Å), multiplied by 100
in float32 and compared with integer thresholds in pm. Pairs without a single-bond table entry (e.g.
B–C) are never bonded (EDM's ``check_exists=True`` behaviour; with QM9 elements every pair has an
entry). The one asymmetric entry of EDM's tables (C=S, 160 pm, only listed as ``bonds2['C']['S']``)
is symmetrised, which reproduces EDM on QM9 and GEOM alike.

See ``shared/reference/edm_protocol.md`` §1 and ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from moldiff.constants import ALLOWED_BONDS, ATOMIC_NUMBERS, BOND_MARGINS_PM, BONDS1, BONDS2, BONDS3

__all__ = [
    "ELEMENTS",
    "bond_order",
    "bond_order_matrix",
    "batch_bond_orders",
    "check_stability",
    "check_stability_bonds",
    "batch_stability",
    "element_indices",
]

#: Elements known to the evaluation (index order used by the vectorised tables).
ELEMENTS: tuple[str, ...] = tuple(ATOMIC_NUMBERS)
_INDEX: dict[str, int] = {s: i for i, s in enumerate(ELEMENTS)}
#: Bond orders at or above this value are clipped when looking up allowed valences.
_MAX_VALENCE = 8


def _threshold_table(table: dict[str, dict[str, int]], margin: int) -> np.ndarray:
    """Symmetric [E, E] table of ``length + margin`` in pm; ``-inf`` where no entry exists."""
    out = np.full((len(ELEMENTS), len(ELEMENTS)), -np.inf, dtype=np.float64)
    for a, row in table.items():
        for b, length in row.items():
            if a in _INDEX and b in _INDEX:
                out[_INDEX[a], _INDEX[b]] = out[_INDEX[b], _INDEX[a]] = length + margin
    return out


#: [3, E, E] cut-offs (pm) for single, double, triple bonds (strict ``<``; ``-inf`` = never).
_CUTOFFS: np.ndarray = np.stack(
    [_threshold_table(t, m) for t, m in zip((BONDS1, BONDS2, BONDS3), BOND_MARGINS_PM, strict=True)]
).astype(np.float32)


def _allowed_table() -> np.ndarray:
    """[E, _MAX_VALENCE] boolean table: ``allowed[e, v]`` iff valence ``v`` makes element ``e`` stable."""
    out = np.zeros((len(ELEMENTS), _MAX_VALENCE), dtype=bool)
    for sym, val in ALLOWED_BONDS.items():
        for v in (val,) if isinstance(val, int) else val:
            out[_INDEX[sym], v] = True
    return out


_ALLOWED: np.ndarray = _allowed_table()


def element_indices(symbols: Sequence[str]) -> np.ndarray:
    """Map element symbols to indices into :data:`ELEMENTS`.

    Args:
        symbols: Element symbols, length ``n``.

    Returns:
        Integer array ``[n]``.

    Raises:
        ValueError: If a symbol is not a known element (the message names the allowed ones).
    """
    try:
        return np.fromiter((_INDEX[s] for s in symbols), dtype=np.int64, count=len(symbols))
    except KeyError as exc:
        raise ValueError(f"unknown element {exc.args[0]!r}; known: {', '.join(ELEMENTS)}") from None


def bond_order(sym1: str, sym2: str, dist_angstrom: float) -> int:
    """EDM bond order of one atom pair.

    Args:
        sym1: Element of the first atom, e.g. ``"C"``.
        sym2: Element of the second atom.
        dist_angstrom: Interatomic distance in Å.

    Returns:
        0 (no bond), 1, 2 or 3.

    Raises:
        ValueError: For an unknown element.

    >>> bond_order("C", "C", 1.20), bond_order("C", "C", 1.39), bond_order("C", "H", 1.09)
    (3, 1, 1)
    """
    i, j = element_indices([sym1, sym2])
    d_pm = np.float32(np.float32(dist_angstrom) * np.float32(100.0))
    c = _CUTOFFS[:, i, j]
    single = bool(d_pm < c[0])
    double = single and bool(d_pm < c[1])
    triple = double and bool(d_pm < c[2])
    return int(single) + int(double) + int(triple)


def _orders_from_dist(types_i: np.ndarray, types_j: np.ndarray, d_pm: np.ndarray) -> np.ndarray:
    """Bond orders (int8) from broadcastable type-index arrays and float32 distances in pm."""
    single = d_pm < _CUTOFFS[0][types_i, types_j]
    double = single & (d_pm < _CUTOFFS[1][types_i, types_j])
    triple = double & (d_pm < _CUTOFFS[2][types_i, types_j])
    return single.astype(np.int8) + double.astype(np.int8) + triple.astype(np.int8)


def _dist_pm(pos: np.ndarray) -> np.ndarray:
    """All-pairs distances in pm, float32 as in EDM. ``pos``: [..., n, 3] Å → [..., n, n]."""
    pos = np.asarray(pos, dtype=np.float32)
    diff = pos[..., :, None, :] - pos[..., None, :, :]
    return np.sqrt((diff * diff).sum(-1)) * np.float32(100.0)


def bond_order_matrix(symbols: Sequence[str], pos: np.ndarray) -> np.ndarray:
    """EDM bond orders of all atom pairs of one molecule.

    Args:
        symbols: Element symbols, length ``n``.
        pos: Coordinates in Å, shape ``[n, 3]``.

    Returns:
        Symmetric int8 matrix ``[n, n]`` with zero diagonal; entries 0..3.

    >>> bond_order_matrix(["C", "O"], np.array([[0.0, 0, 0], [1.12, 0, 0]]))[0, 1]
    np.int8(3)
    """
    types = element_indices(symbols)
    pos = np.asarray(pos)
    if pos.shape != (len(types), 3):
        raise ValueError(f"pos must have shape ({len(types)}, 3), got {pos.shape}")
    orders = _orders_from_dist(types[:, None], types[None, :], _dist_pm(pos))
    np.fill_diagonal(orders, 0)
    return orders


def batch_bond_orders(types: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """EDM bond orders for a padded batch of molecules.

    Args:
        types: Element indices into :data:`ELEMENTS`, ``[m, n]``; ``-1`` marks padding.
        pos: Coordinates in Å, ``[m, n, 3]`` (padding values are ignored).

    Returns:
        int8 array ``[m, n, n]``; zero on the diagonal and for any pair involving padding.
    """
    mask = types >= 0
    t = np.where(mask, types, 0)
    orders = _orders_from_dist(t[:, :, None], t[:, None, :], _dist_pm(pos))
    pair_mask = mask[:, :, None] & mask[:, None, :]
    pair_mask &= ~np.eye(types.shape[1], dtype=bool)[None]
    orders *= pair_mask
    return orders


def _stable_atoms(types: np.ndarray, valence: np.ndarray) -> np.ndarray:
    """Boolean stability per atom from element indices and summed bond orders (same shapes)."""
    v = np.minimum(valence, _MAX_VALENCE - 1)
    return _ALLOWED[np.where(types >= 0, types, 0), v] & (types >= 0)


def check_stability(symbols: Sequence[str], pos: np.ndarray) -> tuple[bool, int, int]:
    """EDM atom / molecule stability of one molecule (``analyze.py::check_stability``).

    Args:
        symbols: Element symbols, length ``n``.
        pos: Coordinates in Å, ``[n, 3]``.

    Returns:
        ``(molecule_stable, n_stable_atoms, n_atoms)``.

    >>> pos = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
    ...                 [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    >>> check_stability(["C", "H", "H", "H", "H"], pos)
    (True, 5, 5)
    """
    orders = bond_order_matrix(symbols, pos)
    stable = _stable_atoms(element_indices(symbols), orders.sum(1, dtype=np.int64))
    n_stable = int(stable.sum())
    return n_stable == len(symbols), n_stable, len(symbols)


#: Valence contribution of a given bond: int codes 1/2/3/4 (4 = aromatic, as in
#: :data:`moldiff.constants.BOND_ORDERS`) and float orders 1.0/2.0/3.0/1.5 (:attr:`moldiff.io.Molecule.bonds`);
#: 0 (RDKit's zero-order bond, a bond-channel model's "no bond") adds nothing.
_GIVEN_ORDER: dict[float, float] = {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 1.5, 1.5: 1.5}


def check_stability_bonds(
    symbols: Sequence[str], bonds: Iterable[tuple[int, int, float]], formal_charges: Sequence[int] | None = None
) -> tuple[bool, int, int]:
    """Atom / molecule stability from GIVEN bonds (a file's or a bond-channel model's), not from distances.

    The same allowed-valence table as :func:`check_stability` (EDM's neutral valences); only the
    valences differ: an atom's valence is the sum of the orders of its given bonds, aromatic bonds
    counting 1.5, converted to an integer by truncation (``int``, as MiDi / EQGAT-diff's ``.long()``),
    so e.g. a ring-fusion carbon of naphthalene (three aromatic bonds, 4.5) counts 4. This is the
    stability MiDi and EQGAT-diff report for their own bonds; it is not EDM's metric.

    Args:
        symbols: Element symbols, length ``n``.
        bonds: ``(i, j, order)`` with 0-based atom indices; ``order`` an int code 1 / 2 / 3 / 4
            (4 = aromatic) or a float 1.0 / 2.0 / 3.0 / 1.5 (aromatic), as in
            :attr:`moldiff.io.Molecule.bonds`; 0 adds nothing.
        formal_charges: Accepted for symmetry with the records that carry them and **ignored**, as
            :func:`check_stability` (EDM) ignores charges: a charged atom is stable only if its
            valence is a neutral allowed one.

    Returns:
        ``(molecule_stable, n_stable_atoms, n_atoms)``.

    Raises:
        ValueError: For an unknown element (as :func:`check_stability`), an atom index out of range,
            a self-bond, or an unsupported order.

    >>> check_stability_bonds(["C", "H", "H", "H", "H"], [(0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 4, 1)])
    (True, 5, 5)
    >>> check_stability_bonds(["O", "H"], [(0, 1, 1.0)])
    (False, 1, 2)
    """
    del formal_charges  # ignored, like EDM (see above)
    types = element_indices(symbols)
    n = len(types)
    valence = np.zeros(n, dtype=np.float64)
    for i, j, order in bonds:
        i, j = int(i), int(j)
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"bad bond ({i}, {j}) for {n} atoms")
        try:
            value = _GIVEN_ORDER[float(order)]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"unsupported bond order {order!r} for bond ({i}, {j}); allowed: "
                             "1, 2, 3, 4 (aromatic), 1.0, 2.0, 3.0, 1.5 (aromatic), 0") from None
        valence[i] += value
        valence[j] += value
    stable = _stable_atoms(types, np.floor(valence + 1e-6).astype(np.int64))
    n_stable = int(stable.sum())
    return n_stable == n, n_stable, n


def stability_fractions(molecules: Iterable[tuple[Sequence[str], np.ndarray]]) -> tuple[float, float]:
    """EDM ``(atom_stability, mol_stability)`` fractions of ``(symbols, pos)`` pairs (0 for none).

    >>> ch4 = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
    ...                 [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    >>> stability_fractions([(["C", "H", "H", "H", "H"], ch4), (["C"], np.zeros((1, 3)))])
    (0.8333333333333334, 0.5)
    """
    checks = [check_stability(symbols, pos) for symbols, pos in molecules]
    atoms = sum(n_atoms for _, _, n_atoms in checks)
    return (sum(n_ok for _, n_ok, _ in checks) / max(atoms, 1),
            sum(ok for ok, _, _ in checks) / max(len(checks), 1))


def batch_stability(
    types: np.ndarray, pos: np.ndarray, return_orders: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised EDM stability for a padded batch.

    Args:
        types: Element indices ``[m, n]`` (``-1`` = padding).
        pos: Coordinates in Å ``[m, n, 3]``.
        return_orders: Also return the ``[m, n, n]`` bond-order array.

    Returns:
        ``(stable_atoms [m, n] bool, valence [m, n] int)`` and optionally the orders. Padding atoms are
        reported unstable; count real atoms with ``types >= 0``.
    """
    orders = batch_bond_orders(types, pos)
    valence = orders.sum(2, dtype=np.int64)
    stable = _stable_atoms(types, valence)
    return (stable, valence, orders) if return_orders else (stable, valence)
