"""Molecules as a PyTorch Geometric ``InMemoryDataset``, for users of PyG loaders and models.

moldiff's own training reads :class:`~moldiff.data.arrays.MoleculeArrays` through
:class:`~moldiff.data.loader.MolLoader` (vectorised, resumable). This adapter exposes the same
flat arrays to PyG without copying them into per-molecule objects: an ``InMemoryDataset`` is one
concatenated ``Data`` plus ``slices``, which is exactly the ``ptr`` layout of ``MoleculeArrays``.

>>> ds = MolGraphDataset.from_dataset("qm9", split="train", properties=["alpha"])  # doctest: +SKIP
>>> ds[0]                                                                           # doctest: +SKIP
Data(pos=[..., 3], z=[...], charges=[...], y=[1, 1], idx=[1], num_nodes=...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from moldiff.data.arrays import MoleculeArrays


class MolGraphDataset(InMemoryDataset):
    """Each item is ``Data(pos [n, 3] float32 Å, z [n] atomic numbers, charges [n] float32, y [1, P], idx [1])``.

    Datasets with bonds add ``edge_index [2, 2E]`` (each bond in both directions, PyG's convention)
    and ``edge_attr [2E]`` (bond-type codes 1, 2, 3, 4 = aromatic); with formal charges,
    ``formal_charge [n]`` (long).

    Args:
        arrays: the molecules.
        rows: molecule indices to keep (default: all), in this order.
        properties: property columns for ``y`` (raw units, in this order); none: ``y`` is ``[1, 0]``.
        transform: optional PyG transform applied on access.

    Raises:
        ValueError: an unknown property.
    """

    def __init__(self, arrays: MoleculeArrays, rows: Sequence[int] | np.ndarray | None = None,
                 properties: Sequence[str] = (), transform: Callable[[Data], Data] | None = None) -> None:
        super().__init__(root=None, transform=transform, log=False)
        unknown = [p for p in properties if p not in arrays.properties]
        if unknown:
            raise ValueError(f"unknown properties {unknown}; available: {sorted(arrays.properties)}")
        sub = arrays if rows is None else arrays.subset(np.asarray(rows, dtype=np.int64))
        n = sub.num_molecules
        y = np.stack([np.asarray(sub.properties[p], dtype=np.float32) for p in properties], axis=1) \
            if properties else np.zeros((n, 0), dtype=np.float32)
        z = torch.from_numpy(sub.atomic_numbers.astype(np.int64))
        data = Data(pos=torch.from_numpy(sub.pos.astype(np.float32)), z=z, charges=z.float(),
                    y=torch.from_numpy(y), idx=torch.from_numpy(sub.index.astype(np.int64)))
        ptr = torch.from_numpy(sub.ptr.astype(np.int64))
        per_mol = torch.arange(n + 1)
        slices = {"pos": ptr, "z": ptr, "charges": ptr, "y": per_mol, "idx": per_mol}
        if sub.bond_ptr is not None:
            pairs = sub.bond_index.astype(np.int64)
            both = np.stack([pairs, pairs[:, ::-1]], axis=1).reshape(-1, 2)  # bond e -> edges 2e, 2e + 1
            data.edge_index = torch.from_numpy(np.ascontiguousarray(both.T))
            data.edge_attr = torch.from_numpy(np.repeat(sub.bond_type.astype(np.int64), 2))
            slices["edge_index"] = slices["edge_attr"] = torch.from_numpy(2 * sub.bond_ptr.astype(np.int64))
        if sub.formal_charge is not None:
            data.formal_charge = torch.from_numpy(sub.formal_charge.astype(np.int64))
            slices["formal_charge"] = ptr
        self.data, self.slices = data, slices
        self.properties = tuple(properties)

    @classmethod
    def from_dataset(cls, name: str = "qm9", split: str | None = "train", properties: Sequence[str] = (),
                     transform: Callable[[Data], Data] | None = None) -> MolGraphDataset:
        """A dataset by name (``"qm9"`` or an imported one), optionally one of its splits (EDM's for QM9)."""
        from moldiff.data.datasets import load_dataset
        from moldiff.data.splits import get_split

        arrays = load_dataset(name)
        rows = None if split is None else get_split(split, name)
        return cls(arrays, rows, properties, transform)
