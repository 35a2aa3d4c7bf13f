"""Flat (concatenated) storage of a molecule set: ``MoleculeArrays``.

All atoms of all molecules live in one ``[A, 3]`` position array; ``ptr`` holds the offsets, so
molecule ``i`` owns atoms ``ptr[i]:ptr[i+1]`` (PyG's CSR convention). The arrays are saved to and
loaded from one uncompressed ``.npz`` file, which reloads in well under a second.

Optional chemistry (datasets imported from SDF or built from SMILES carry it; QM9 does not):

* bonds, stored the same way: ``bond_ptr [M + 1]`` offsets, so molecule ``i`` owns bonds
  ``bond_ptr[i]:bond_ptr[i+1]``; ``bond_index [E, 2]`` holds each bond once as *molecule-local*
  atom indices ``(i, j)`` with ``i < j``; ``bond_type [E]`` holds the code of
  :data:`moldiff.constants.BOND_ORDERS`: 1 single, 2 double, 3 triple, 4 aromatic.
* ``formal_charge [A]`` int8 per-atom formal charges.
* ``has_bonds_mask [M]`` bool, only for sets whose bonds are unknown for some molecules (QM9's bonds
  are derived from the geometry and the SMILES, which fails for a handful): ``False`` rows store no
  bonds, and NOT because they have none; bond models leave them out. Without it every molecule's
  bonds are known.

Files with either are written as layout version 2; files without stay version 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moldiff.constants import ATOMIC_NUMBERS, BOND_ORDERS, SYMBOLS

#: Version of the ``.npz`` layout written by :meth:`MoleculeArrays.save` (2: with bonds / formal charges).
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_PROP_PREFIX = "prop__"
_CHEMISTRY_KEYS = ("bond_index", "bond_type", "bond_ptr", "formal_charge", "has_bonds_mask")

#: One molecule's bonds: ``[(i, j, code), ...]`` with molecule-local atom indices and the codes of
#: :data:`~moldiff.constants.BOND_ORDERS`.
BondList = Sequence[tuple[int, int, int]]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def read_npz(path: str | Path, what: str = "data file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (``allow_pickle=False``), read eagerly.

    A damaged file (truncated, not a zip, bad CRC, a broken array) raises ONE ``ValueError`` naming
    ``path``, whichever of NumPy's, ``zipfile``'s or ``zlib``'s errors it met, so the CLI prints one line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as an ``.npz``.
    """
    import zipfile
    import zlib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):  # a bare .npy saved under an .npz name
                raise ValueError("a single array, not an .npz archive")
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: damaged or unreadable {what} ({_first_line(exc)}); rebuild it") from None


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


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
        bond_index: ``[E, 2]`` int32 molecule-local atom pairs ``i < j``, or ``None`` (no bonds stored).
        bond_type: ``[E]`` uint8 bond-type codes (1, 2, 3, 4 = aromatic), or ``None``.
        bond_ptr: ``[M + 1]`` int64 bond offsets, or ``None``.
        formal_charge: ``[A]`` int8 formal charges, or ``None``.
        has_bonds_mask: ``[M]`` bool, ``False`` for molecules whose bonds are unknown (they store
            none), or ``None`` (every molecule's bonds are known); needs bonds.
    """

    pos: np.ndarray
    atomic_numbers: np.ndarray
    ptr: np.ndarray
    elements: tuple[str, ...]
    names: np.ndarray
    index: np.ndarray
    properties: Mapping[str, np.ndarray] = field(default_factory=dict)
    smiles: np.ndarray | None = None
    bond_index: np.ndarray | None = None
    bond_type: np.ndarray | None = None
    bond_ptr: np.ndarray | None = None
    formal_charge: np.ndarray | None = None
    has_bonds_mask: np.ndarray | None = None

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
        if self.smiles is not None and len(self.smiles) != m:
            raise ValueError(f"smiles must have {m} entries")
        if self.formal_charge is not None and np.shape(self.formal_charge) != (a,):
            raise ValueError(f"formal_charge must have shape [{a}], got {list(np.shape(self.formal_charge))}")
        self._check_bonds()

    def _check_bonds(self) -> None:
        parts = (self.bond_index, self.bond_type, self.bond_ptr)
        if all(p is None for p in parts):
            if self.has_bonds_mask is not None:
                raise ValueError("has_bonds_mask needs bonds")
            return
        if any(p is None for p in parts):
            raise ValueError("bond_index, bond_type and bond_ptr must be given together")
        bptr, e = self.bond_ptr, len(self.bond_type)
        if len(bptr) != len(self.ptr) or bptr[0] != 0 or bptr[-1] != e or np.any(np.diff(bptr) < 0):
            raise ValueError(f"bond_ptr must have {len(self.ptr)} entries rising from 0 to the number of bonds ({e})")
        if np.shape(self.bond_index) != (e, 2):
            raise ValueError(f"bond_index must have shape [{e}, 2], got {list(np.shape(self.bond_index))}")
        if e:
            n_of_bond = np.repeat(self.n_atoms, np.diff(bptr))
            if np.any(self.bond_index < 0) or np.any(self.bond_index >= n_of_bond[:, None]):
                raise ValueError("bond_index holds an atom index outside its molecule")
            if np.any(self.bond_index[:, 0] == self.bond_index[:, 1]):
                raise ValueError("bond_index holds a bond of an atom to itself")
            if not set(np.unique(self.bond_type).tolist()) <= set(BOND_ORDERS):
                raise ValueError(f"bond_type codes must be in {sorted(BOND_ORDERS)}")
        mask = self.has_bonds_mask
        if mask is not None:
            if np.shape(mask) != (len(self.ptr) - 1,) or np.asarray(mask).dtype != np.bool_:
                raise ValueError(f"has_bonds_mask must be a bool array of shape [{len(self.ptr) - 1}]")
            if np.any(np.diff(bptr)[~mask]):
                raise ValueError("molecules outside has_bonds_mask must store no bonds")

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
    def has_bonds(self) -> bool:
        """Whether bonds are stored."""
        return self.bond_ptr is not None

    @property
    def n_bonds(self) -> np.ndarray:
        """``[M]`` int64 bond count of every molecule (raises if no bonds are stored)."""
        if self.bond_ptr is None:
            raise ValueError("this molecule set stores no bonds")
        return np.diff(self.bond_ptr)

    @property
    def bonds_known(self) -> np.ndarray:
        """``[M]`` bool: whose bonds are stored (all if bonds are stored without a mask, none without bonds)."""
        if self.bond_ptr is None:
            return np.zeros(self.num_molecules, dtype=bool)
        if self.has_bonds_mask is None:
            return np.ones(self.num_molecules, dtype=bool)
        return np.asarray(self.has_bonds_mask, dtype=bool)

    def bonds(self, i: int) -> list[tuple[int, int, int]]:
        """``[(i, j, code), ...]`` molecule-local bonds of molecule ``i`` (raises if none are stored)."""
        i = range(self.num_molecules)[i]
        if self.bond_ptr is None:
            raise ValueError("this molecule set stores no bonds")
        lo, hi = int(self.bond_ptr[i]), int(self.bond_ptr[i + 1])
        pairs, codes = self.bond_index[lo:hi].tolist(), self.bond_type[lo:hi].tolist()
        return [(a, b, t) for (a, b), t in zip(pairs, codes, strict=True)]

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
        bonds: dict[str, np.ndarray | None] = {}
        if self.bond_ptr is not None:
            b_counts = self.n_bonds[rows]
            sel = atom_ranges(self.bond_ptr[rows], b_counts)
            bonds = {"bond_index": self.bond_index[sel], "bond_type": self.bond_type[sel],
                     "bond_ptr": _offsets(b_counts),
                     "has_bonds_mask": None if self.has_bonds_mask is None else self.has_bonds_mask[rows]}
        return MoleculeArrays(
            pos=self.pos[atoms],
            atomic_numbers=self.atomic_numbers[atoms],
            ptr=_offsets(counts),
            elements=self.elements,
            names=self.names[rows],
            index=self.index[rows],
            properties={k: v[rows] for k, v in self.properties.items()},
            smiles=None if self.smiles is None else self.smiles[rows],
            formal_charge=None if self.formal_charge is None else self.formal_charge[atoms],
            **bonds,
        )

    def remove_hydrogens(self) -> MoleculeArrays:
        """Drop every hydrogen atom (EDM's ``remove_h``); ``"H"`` leaves the vocabulary.

        Bonds to hydrogens are dropped and the remaining bonds renumbered; formal charges are kept
        on the heavy atoms (the SMILES, if stored, still describes the full molecule).
        """
        keep = self.atomic_numbers != 1
        counts = np.bincount(self.batch[keep], minlength=self.num_molecules)
        bonds: dict[str, np.ndarray | None] = {}
        if self.bond_ptr is not None:
            bond_mol = np.repeat(np.arange(self.num_molecules), self.n_bonds)
            glob = self.bond_index.astype(np.int64) + self.ptr[bond_mol][:, None]
            keep_bond = keep[glob].all(axis=1)
            # new local index of every kept atom: its rank among the kept atoms of its molecule
            new_global = np.cumsum(keep) - 1
            new_ptr = _offsets(counts)
            local = new_global[glob[keep_bond]] - new_ptr[bond_mol[keep_bond]][:, None]
            bonds = {"bond_index": local.astype(np.int32), "bond_type": self.bond_type[keep_bond],
                     "bond_ptr": _offsets(np.bincount(bond_mol[keep_bond], minlength=self.num_molecules)),
                     "has_bonds_mask": self.has_bonds_mask}
        return MoleculeArrays(
            pos=self.pos[keep],
            atomic_numbers=self.atomic_numbers[keep],
            ptr=_offsets(counts),
            elements=tuple(s for s in self.elements if s != "H"),
            names=self.names,
            index=self.index,
            properties=dict(self.properties),
            smiles=self.smiles,
            formal_charge=None if self.formal_charge is None else self.formal_charge[keep],
            **bonds,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[MoleculeArrays], elements: Sequence[str] | None = None) -> MoleculeArrays:
        """Join molecule sets in order (e.g. the shards of a build).

        Args:
            parts: the sets; all or none store bonds, all or none formal charges and SMILES, and all
                the same property names.
            elements: vocabulary of the result (default: the union, sorted by atomic number).

        Raises:
            ValueError: no parts, or parts that store different fields.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        if elements is None:
            elements = sorted({s for p in parts for s in p.elements}, key=ATOMIC_NUMBERS.__getitem__)
        for attr in ("bond_ptr", "formal_charge", "smiles"):
            if len({getattr(p, attr) is None for p in parts}) > 1:
                raise ValueError(f"cannot concatenate sets with and without {attr}")
        keys = list(parts[0].properties)
        if any(sorted(p.properties) != sorted(keys) for p in parts):
            raise ValueError("cannot concatenate sets with different properties")
        first = parts[0]

        def cat(attr: str) -> np.ndarray | None:
            if getattr(first, attr) is None:
                return None
            return np.concatenate([getattr(p, attr) for p in parts])

        bonds: dict[str, np.ndarray | None] = {}
        if first.bond_ptr is not None:
            bonds = {"bond_index": cat("bond_index"), "bond_type": cat("bond_type"),
                     "bond_ptr": _offsets(np.concatenate([p.n_bonds for p in parts]))}
            if any(p.has_bonds_mask is not None for p in parts):
                bonds["has_bonds_mask"] = np.concatenate([p.bonds_known for p in parts])
        return cls(
            pos=np.concatenate([p.pos for p in parts]),
            atomic_numbers=np.concatenate([p.atomic_numbers for p in parts]),
            ptr=_offsets(np.concatenate([p.n_atoms for p in parts])),
            elements=tuple(elements),
            names=np.concatenate([p.names for p in parts]),
            index=np.concatenate([p.index for p in parts]),
            properties={k: np.concatenate([p.properties[k] for p in parts]) for k in keys},
            smiles=cat("smiles"),
            formal_charge=cat("formal_charge"),
            **bonds,
        )

    def __repr__(self) -> str:
        props = ", ".join(self.properties)
        extra = "" if self.bond_ptr is None else f", num_bonds={len(self.bond_type)}"
        return (
            f"MoleculeArrays(num_molecules={self.num_molecules}, num_atoms={self.num_atoms_total}{extra}, "
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
        *,
        bonds: Sequence[BondList | None] | None = None,
        formal_charges: Sequence[Sequence[int]] | None = None,
        smiles: Sequence[str] | None = None,
        index: Sequence[int] | None = None,
    ) -> MoleculeArrays:
        """Build from ``(symbols, pos [n, 3])`` pairs.

        Args:
            molecules: one ``(symbols, pos)`` pair per molecule.
            names: molecule names (default ``mol_000000`` ...).
            properties: name -> ``[M]`` values.
            elements: vocabulary (default: the elements present, sorted by atomic number).
            bonds: per molecule ``[(i, j, code), ...]`` (local indices; codes 1, 2, 3, 4 = aromatic);
                stored with ``i < j``, in the given order. ``None`` for a molecule whose bonds are
                unknown (it gets ``has_bonds_mask`` ``False``).
            formal_charges: per molecule ``n`` integer formal charges.
            smiles: per molecule SMILES.
            index: per molecule source index (default ``1..M``).

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
        extra: dict[str, np.ndarray | None] = {}
        if bonds is not None:
            if len(bonds) != m:
                raise ValueError(f"bonds must have {m} entries, got {len(bonds)}")
            known = np.array([b is not None for b in bonds], dtype=bool)
            bonds = [b if b is not None else [] for b in bonds]
            flat = [(min(i, j), max(i, j), t) for mol_bonds in bonds for i, j, t in mol_bonds]
            arr = np.array(flat, dtype=np.int64).reshape(-1, 3)
            extra.update(bond_index=arr[:, :2].astype(np.int32), bond_type=arr[:, 2].astype(np.uint8),
                         bond_ptr=_offsets(np.array([len(b) for b in bonds], dtype=np.int64)),
                         has_bonds_mask=None if known.all() else known)
        if formal_charges is not None:
            fc = [np.asarray(c, dtype=np.int8).reshape(-1) for c in formal_charges]
            if len(fc) != m or any(len(c) != n for c, n in zip(fc, counts, strict=True)):
                raise ValueError("formal_charges needs one charge per atom of every molecule")
            extra["formal_charge"] = np.concatenate(fc) if fc else np.zeros(0, np.int8)
        return cls(
            pos=np.concatenate(pos) if pos else np.zeros((0, 3), np.float32),
            atomic_numbers=np.array([ATOMIC_NUMBERS[s] for s in symbols], dtype=np.uint8),
            ptr=_offsets(counts),
            elements=tuple(elements),
            names=np.array(list(names) if names is not None else [f"mol_{i:06d}" for i in range(m)], str),
            index=np.arange(1, m + 1, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64),
            properties={k: np.asarray(v, dtype=np.float64) for k, v in (properties or {}).items()},
            smiles=None if smiles is None else np.array(list(smiles), dtype=str),
            **extra,
        )

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays as written by :meth:`save` (no pickled objects)."""
        chemistry = {k: getattr(self, k) for k in _CHEMISTRY_KEYS if getattr(self, k) is not None}
        out = {
            "format_version": np.array(FORMAT_VERSION if chemistry else 1),
            "pos": self.pos,
            "atomic_numbers": self.atomic_numbers,
            "ptr": self.ptr,
            "elements": np.array(self.elements, dtype=str),
            "names": self.names,
            "index": self.index,
        }
        if self.smiles is not None:
            out["smiles"] = self.smiles
        out.update(chemistry)
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
        f = read_npz(path, "molecule file")
        if "format_version" not in f or int(f["format_version"]) not in _READABLE_VERSIONS:
            raise ValueError(f"{path}: not a moldiff molecule file of format {_READABLE_VERSIONS}")
        props = {k[len(_PROP_PREFIX):]: v for k, v in f.items() if k.startswith(_PROP_PREFIX)}
        try:
            return cls(
                pos=f["pos"],
                atomic_numbers=f["atomic_numbers"],
                ptr=f["ptr"],
                elements=tuple(str(s) for s in f["elements"]),
                names=f["names"],
                index=f["index"],
                properties=props,
                smiles=f.get("smiles"),
                **{k: f[k] for k in _CHEMISTRY_KEYS if k in f},
            )
        except (KeyError, ValueError, TypeError) as exc:  # a key missing, or arrays that do not fit together
            raise ValueError(f"{path}: damaged molecule file ({_first_line(exc)}); rebuild it") from None
