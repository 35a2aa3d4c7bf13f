"""Flat (concatenated) storage of a molecule set: ``MoleculeArrays``.

All atoms of all molecules live in one ``[A, 3]`` position array; ``ptr`` holds the offsets, so
molecule ``i`` owns atoms ``ptr[i]:ptr[i+1]`` (PyG's CSR convention). The arrays are saved to and
loaded from one uncompressed ``.npz`` file, which reloads in well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moldiff.constants import ATOMIC_NUMBERS, SYMBOLS

#: Version of the ``.npz`` layout written by :meth:`MoleculeArrays.save`.
FORMAT_VERSION = 1
_PROP_PREFIX = "prop__"


def atom_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenate the index ranges ``[starts[k], starts[k] + counts[k])`` without a Python loop.

    Args:
        starts: ``[B]`` first index of every range.
        counts: ``[B]`` length of every range (may contain zeros).

    Returns:
        ``[sum(counts)]`` int64 indices.

    >>> atom_ranges(np.array([5, 0]), np.array([2, 3])).tolist()
    [5, 6, 0, 1, 2]
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts  # position of each range in the output
    return np.repeat(starts - offsets, counts) + np.arange(total, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class MoleculeArrays:
    """A set of ``M`` molecules with ``A`` atoms in total, stored flat.

    Attributes:
        pos: ``[A, 3]`` float32 positions in Å (as stored, not centred).
        atomic_numbers: ``[A]`` uint8 atomic numbers.
        ptr: ``[M + 1]`` int64 atom offsets; ``ptr[0] == 0`` and ``ptr[-1] == A``.
        elements: element vocabulary sorted by atomic number, e.g. ``("H", "C", "N", "O", "F")``;
            the one-hot order used by the loader.
        names: ``[M]`` str molecule names.
        index: ``[M]`` int64 source index of every molecule (QM9: the 1-based GDB index).
        properties: name -> ``[M]`` float64 per-molecule property.
        smiles: ``[M]`` str SMILES or ``None``.
    """

    pos: np.ndarray
    atomic_numbers: np.ndarray
    ptr: np.ndarray
    elements: tuple[str, ...]
    names: np.ndarray
    index: np.ndarray
    properties: Mapping[str, np.ndarray] = field(default_factory=dict)
    smiles: np.ndarray | None = None

    def __post_init__(self) -> None:
        m, a = len(self.ptr) - 1, len(self.atomic_numbers)
        if m < 0 or self.ptr[0] != 0 or self.ptr[-1] != a or np.any(np.diff(self.ptr) < 0):
            raise ValueError(f"ptr must rise from 0 to the number of atoms ({a})")
        if self.pos.shape != (a, 3):
            raise ValueError(f"pos must have shape [{a}, 3], got {list(self.pos.shape)}")
        if len(self.names) != m or len(self.index) != m:
            raise ValueError(f"names and index must have {m} entries")
        for key, val in self.properties.items():
            if np.shape(val) != (m,):
                raise ValueError(f"property {key!r} must have shape [{m}], got {list(np.shape(val))}")
        known = {ATOMIC_NUMBERS[s] for s in self.elements}
        if a and not set(np.unique(self.atomic_numbers).tolist()) <= known:
            raise ValueError(f"atoms outside the element vocabulary {self.elements}")

    # ------------------------------------------------------------------ views
    @property
    def num_molecules(self) -> int:
        """Number of molecules ``M``."""
        return len(self.ptr) - 1

    @property
    def num_atoms_total(self) -> int:
        """Total number of atoms ``A``."""
        return len(self.atomic_numbers)

    @property
    def n_atoms(self) -> np.ndarray:
        """``[M]`` int64 atom count of every molecule."""
        return np.diff(self.ptr)

    @property
    def type_index(self) -> np.ndarray:
        """``[A]`` int64 index of every atom's element in :attr:`elements` (one-hot position)."""
        lut = np.full(256, -1, dtype=np.int64)
        lut[[ATOMIC_NUMBERS[s] for s in self.elements]] = np.arange(len(self.elements))
        return lut[self.atomic_numbers]

    @property
    def batch(self) -> np.ndarray:
        """``[A]`` int64 molecule index of every atom."""
        return np.repeat(np.arange(self.num_molecules, dtype=np.int64), self.n_atoms)

    def molecule(self, i: int) -> tuple[list[str], np.ndarray]:
        """Return ``(symbols, pos [n, 3] float64)`` of molecule ``i``."""
        i = range(self.num_molecules)[i]  # bounds check, negative indices
        lo, hi = int(self.ptr[i]), int(self.ptr[i + 1])
        symbols = [SYMBOLS[int(z)] for z in self.atomic_numbers[lo:hi]]
        return symbols, self.pos[lo:hi].astype(np.float64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> MoleculeArrays:
        """Molecules ``indices`` (in that order) as a new ``MoleculeArrays`` (same vocabulary)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -self.num_molecules or rows.max() >= self.num_molecules):
            raise IndexError(f"molecule index out of range for {self.num_molecules} molecules")
        rows = rows % max(self.num_molecules, 1)
        counts = self.n_atoms[rows]
        atoms = atom_ranges(self.ptr[rows], counts)
        return MoleculeArrays(
            pos=self.pos[atoms],
            atomic_numbers=self.atomic_numbers[atoms],
            ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            elements=self.elements,
            names=self.names[rows],
            index=self.index[rows],
            properties={k: v[rows] for k, v in self.properties.items()},
            smiles=None if self.smiles is None else self.smiles[rows],
        )

    def remove_hydrogens(self) -> MoleculeArrays:
        """Drop every hydrogen atom (EDM's ``remove_h``); ``"H"`` leaves the vocabulary."""
        keep = self.atomic_numbers != 1
        counts = np.bincount(self.batch[keep], minlength=self.num_molecules)
        return MoleculeArrays(
            pos=self.pos[keep],
            atomic_numbers=self.atomic_numbers[keep],
            ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            elements=tuple(s for s in self.elements if s != "H"),
            names=self.names,
            index=self.index,
            properties=dict(self.properties),
            smiles=self.smiles,
        )

    def __repr__(self) -> str:
        props = ", ".join(self.properties)
        return (
            f"MoleculeArrays(num_molecules={self.num_molecules}, num_atoms={self.num_atoms_total}, "
            f"elements={self.elements}, properties=[{props}])"
        )

    # ------------------------------------------------------------------ construction / storage
    @classmethod
    def from_molecules(
        cls,
        molecules: Sequence[tuple[Sequence[str], np.ndarray]],
        names: Sequence[str] | None = None,
        properties: Mapping[str, Sequence[float]] | None = None,
        elements: Sequence[str] | None = None,
    ) -> MoleculeArrays:
        """Build from ``(symbols, pos [n, 3])`` pairs.

        Args:
            molecules: one ``(symbols, pos)`` pair per molecule.
            names: molecule names (default ``mol_000000`` ...).
            properties: name -> ``[M]`` values.
            elements: vocabulary (default: the elements present, sorted by atomic number).

        Raises:
            ValueError: on an unknown element or a shape mismatch.
        """
        symbols = [s for syms, _ in molecules for s in syms]
        unknown = sorted(set(symbols) - set(ATOMIC_NUMBERS))
        if unknown:
            raise ValueError(f"unknown element(s) {unknown}")
        if elements is None:
            elements = sorted(set(symbols), key=ATOMIC_NUMBERS.__getitem__)
        counts = np.array([len(syms) for syms, _ in molecules], dtype=np.int64)
        pos = [np.asarray(p, dtype=np.float32).reshape(-1, 3) for _, p in molecules]
        if any(len(p) != c for p, c in zip(pos, counts, strict=True)):
            raise ValueError("every molecule needs one position per atom")
        m = len(molecules)
        return cls(
            pos=np.concatenate(pos) if pos else np.zeros((0, 3), np.float32),
            atomic_numbers=np.array([ATOMIC_NUMBERS[s] for s in symbols], dtype=np.uint8),
            ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            elements=tuple(elements),
            names=np.array(list(names) if names is not None else [f"mol_{i:06d}" for i in range(m)], str),
            index=np.arange(1, m + 1, dtype=np.int64),
            properties={k: np.asarray(v, dtype=np.float64) for k, v in (properties or {}).items()},
        )

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays as written by :meth:`save` (no pickled objects)."""
        out = {
            "format_version": np.array(FORMAT_VERSION),
            "pos": self.pos,
            "atomic_numbers": self.atomic_numbers,
            "ptr": self.ptr,
            "elements": np.array(self.elements, dtype=str),
            "names": self.names,
            "index": self.index,
        }
        if self.smiles is not None:
            out["smiles"] = self.smiles
        out.update({_PROP_PREFIX + k: v for k, v in self.properties.items()})
        return out

    def save(self, path: str | Path) -> None:
        """Write an uncompressed ``.npz`` atomically (temp file + rename)."""
        from moldiff.io import atomic_write

        with atomic_write(path, mode="wb") as fh:
            np.savez(fh, **self.to_npz_dict())

    @classmethod
    def load(cls, path: str | Path) -> MoleculeArrays:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a moldiff molecule file of this format version.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no molecule file at {path}")
        with np.load(path, allow_pickle=False) as f:
            if "format_version" not in f or int(f["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: not a moldiff molecule file of format {FORMAT_VERSION}")
            props = {k[len(_PROP_PREFIX):]: f[k] for k in f.files if k.startswith(_PROP_PREFIX)}
            return cls(
                pos=f["pos"],
                atomic_numbers=f["atomic_numbers"],
                ptr=f["ptr"],
                elements=tuple(str(s) for s in f["elements"]),
                names=f["names"],
                index=f["index"],
                properties=props,
                smiles=f["smiles"] if "smiles" in f.files else None,
            )
