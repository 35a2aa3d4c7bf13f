"""Fast, resumable mini-batches of :class:`~moldiff.types.MolBatch` from :class:`MoleculeArrays`.

Batches are sparse (atoms concatenated, ``batch`` vector), positions are centred per molecule, and
the gather is one vectorised index computation per batch (no per-molecule Python loop). Datasets
that store bonds and formal charges fill ``MolBatch.bond_index`` / ``bond_type`` / ``formal_charge``
(each bond once, global atom indices of the batch). The order
of an epoch depends only on ``(seed, epoch)``, so training can resume mid-run exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from moldiff.data.arrays import MoleculeArrays, atom_ranges
from moldiff.geometry import remove_mean
from moldiff.types import ContextNormalizer, MolBatch


class MolLoader:
    """Iterate over molecules ``rows`` of ``arrays`` in mini-batches.

    Args:
        arrays: the molecules.
        rows: ``[M']`` row indices to draw from (default: all).
        batch_size: molecules per batch.
        shuffle: reshuffle every epoch with ``torch.Generator().manual_seed(seed + epoch)``.
        drop_last: drop a final incomplete batch.
        seed: base seed of the per-epoch permutation.
        context_keys: property names stacked into ``context [B, C]`` (empty: no context).
        context_norms: ``{key: (mean, MAD)}``; context is ``(c − mean) / MAD``. Required for every
            key of ``context_keys``.
        remove_h: drop hydrogens (and ``"H"`` from the one-hot vocabulary), then centre.
        dtype: float dtype of ``pos``, ``one_hot``, ``atomic_numbers`` and ``context``.

    Example:
        >>> arrays = MoleculeArrays.from_molecules([(["C", "H"], np.eye(3)[:2]), (["O"], np.ones((1, 3)))])
        >>> batch = next(iter(MolLoader(arrays, batch_size=2, shuffle=False)))
        >>> batch.num_graphs, batch.one_hot.shape, batch.batch.tolist()
        (2, torch.Size([3, 3]), [0, 0, 1])
    """

    def __init__(
        self,
        arrays: MoleculeArrays,
        rows: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int = 64,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        context_keys: Sequence[str] = (),
        context_norms: Mapping[str, tuple[float, float]] | None = None,
        remove_h: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        context_keys = tuple(context_keys)
        missing = [k for k in context_keys if k not in arrays.properties]
        if missing:
            avail = ", ".join(arrays.properties)
            raise ValueError(f"unknown context properties {missing}; available: {avail}")
        norms = dict(context_norms or {})
        unnormed = [k for k in context_keys if k not in norms]
        if unnormed:
            raise ValueError(f"context_norms lacks (mean, MAD) for {unnormed}")
        if any(norms[k][1] <= 0 for k in context_keys):
            raise ValueError("context MAD must be positive")
        self.arrays = arrays.remove_hydrogens() if remove_h else arrays
        all_rows = np.arange(arrays.num_molecules, dtype=np.int64)
        self.rows = all_rows if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= arrays.num_molecules):
            raise ValueError(f"rows out of range for {arrays.num_molecules} molecules")
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.context_keys, self.dtype = context_keys, dtype
        self.elements = self.arrays.elements
        self._type_index = self.arrays.type_index
        self._z = self.arrays.atomic_numbers.astype(np.float32)
        self._n_atoms = self.arrays.n_atoms
        if context_keys:
            raw = np.stack([np.asarray(arrays.properties[k], dtype=np.float64) for k in context_keys], axis=1)
            ctx = ContextNormalizer(norms, context_keys).normalize(torch.from_numpy(raw))
            self._context: np.ndarray | None = ctx.numpy()
        else:
            self._context = None
        self._epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __repr__(self) -> str:
        return (
            f"MolLoader(molecules={len(self.rows)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, elements={self.elements}, context={self.context_keys})"
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that the next ``iter(loader)`` runs (like ``DistributedSampler``)."""
        self._epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """``[M']`` molecule rows in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return self.rows
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        return self.rows[torch.randperm(len(self.rows), generator=gen).numpy()]

    def iter_batches(self, epoch: int, start: int = 0) -> Iterator[MolBatch]:
        """Batches of epoch ``epoch``, beginning with batch number ``start`` (for exact resumption)."""
        order = self.epoch_order(epoch)
        for b in range(start, len(self)):
            yield self.collate(order[b * self.batch_size : (b + 1) * self.batch_size])

    def __iter__(self) -> Iterator[MolBatch]:
        """Iterate over the current epoch (see :meth:`set_epoch`), then advance the epoch counter."""
        epoch = self._epoch
        self._epoch += 1
        return self.iter_batches(epoch)

    def collate(self, rows: np.ndarray) -> MolBatch:
        """Build one :class:`MolBatch` from molecule ``rows`` (vectorised gather, centred positions)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self._n_atoms[rows]
        atoms = atom_ranges(self.arrays.ptr[rows], counts)
        batch = torch.from_numpy(np.repeat(np.arange(len(rows), dtype=np.int64), counts))
        pos = torch.from_numpy(self.arrays.pos[atoms]).to(self.dtype)
        pos = remove_mean(pos, batch, len(rows))
        one_hot = torch.nn.functional.one_hot(
            torch.from_numpy(self._type_index[atoms]), num_classes=len(self.elements)
        ).to(self.dtype)
        z = torch.from_numpy(self._z[atoms]).to(self.dtype).unsqueeze(1)
        context = None if self._context is None else torch.from_numpy(self._context[rows]).to(self.dtype)
        arrays, chem = self.arrays, {}
        if arrays.bond_ptr is not None:
            b_counts = arrays.n_bonds[rows]
            sel = atom_ranges(arrays.bond_ptr[rows], b_counts)
            first_atom = np.repeat(np.cumsum(counts) - counts, b_counts)  # batch offset of each bond's molecule
            index = arrays.bond_index[sel].astype(np.int64) + first_atom[:, None]
            chem["bond_index"] = torch.from_numpy(np.ascontiguousarray(index.T))
            chem["bond_type"] = torch.from_numpy(arrays.bond_type[sel].astype(np.int64))
        if arrays.formal_charge is not None:
            chem["formal_charge"] = torch.from_numpy(arrays.formal_charge[atoms].astype(np.int64))
        return MolBatch(pos=pos, one_hot=one_hot, atomic_numbers=z, batch=batch, num_graphs=len(rows),
                        context=context, **chem)


def iter_batches(
    arrays: MoleculeArrays,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int = 64,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    **kwargs: object,
) -> Iterator[MolBatch]:
    """Deterministic batches of one epoch: ``MolLoader(arrays, rows, ...).iter_batches(epoch, start)``."""
    loader = MolLoader(arrays, rows, batch_size=batch_size, seed=seed, **kwargs)  # type: ignore[arg-type]
    return loader.iter_batches(epoch, start)


def batch_molecules(
    batch: MolBatch, elements: Sequence[str]
) -> list[tuple[list[str], np.ndarray, list[tuple[int, int, int]], list[int] | None]]:
    """Split a batch back into molecules: ``(symbols, pos, bonds, formal_charges)`` per molecule.

    The inverse of :meth:`MolLoader.collate` (positions stay centred), shaped for
    :func:`moldiff.io.bonded_mol`. Atom types are the argmax of ``one_hot`` over ``elements``;
    ``bonds`` are molecule-local ``(i, j, code)`` (empty without ``bond_index``), and
    ``formal_charges`` is ``None`` without ``formal_charge``.
    """
    types = batch.one_hot.argmax(dim=1).cpu().numpy()
    pos = batch.pos.detach().cpu().double().numpy()
    mol_of_atom = batch.batch.cpu().numpy()
    counts = np.bincount(mol_of_atom, minlength=batch.num_graphs)
    starts = np.cumsum(counts) - counts
    bonds_by_mol: list[list[tuple[int, int, int]]] = [[] for _ in range(batch.num_graphs)]
    if batch.bond_index is not None and batch.bond_type is not None:
        index = batch.bond_index.cpu().numpy()
        for (i, j), code in zip(index.T.tolist(), batch.bond_type.cpu().tolist(), strict=True):
            m = int(mol_of_atom[i])
            bonds_by_mol[m].append((i - int(starts[m]), j - int(starts[m]), int(code)))
    charges = None if batch.formal_charge is None else batch.formal_charge.cpu().numpy()
    out = []
    for m in range(batch.num_graphs):
        lo, hi = int(starts[m]), int(starts[m] + counts[m])
        out.append((
            [elements[int(t)] for t in types[lo:hi]],
            pos[lo:hi],
            bonds_by_mol[m],
            None if charges is None else charges[lo:hi].tolist(),
        ))
    return out
