"""moldiff/data/pyg.py: the PyG InMemoryDataset view of MoleculeArrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from moldiff.data.arrays import MoleculeArrays
from moldiff.data.pyg import MolGraphDataset


def _arrays() -> MoleculeArrays:
    rng = np.random.default_rng(0)
    mols = [(["C", "H", "H", "O"][: 2 + i % 3], rng.normal(size=(2 + i % 3, 3))) for i in range(7)]
    arrays = MoleculeArrays.from_molecules(mols)
    return MoleculeArrays(arrays.pos, arrays.atomic_numbers, arrays.ptr, arrays.elements, arrays.names,
                          arrays.index, properties={"alpha": np.arange(7, dtype=np.float64) * 1.5})


def test_items_match_the_arrays() -> None:
    arrays = _arrays()
    ds = MolGraphDataset(arrays, rows=[5, 0, 3], properties=["alpha"])
    assert len(ds) == 3
    for item, row in zip(ds, [5, 0, 3], strict=True):
        symbols, pos = arrays.molecule(row)
        assert item.num_nodes == len(symbols)
        assert torch.allclose(item.pos, torch.from_numpy(pos).float())
        assert item.z.tolist() == arrays.atomic_numbers[arrays.ptr[row] : arrays.ptr[row + 1]].tolist()
        assert item.y.tolist() == [[row * 1.5]] and int(item.idx) == int(arrays.index[row])


def test_pyg_loader_batches_and_bad_property() -> None:
    ds = MolGraphDataset(_arrays())
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.num_graphs == 4 and batch.y.shape == (4, 0)
    assert batch.pos.shape[0] == batch.batch.shape[0] == int(ds.slices["pos"][4])
    with pytest.raises(ValueError, match="unknown properties"):
        MolGraphDataset(_arrays(), properties=["gap"])


@pytest.mark.dataset
def test_qm9_train_split() -> None:
    ds = MolGraphDataset.from_dataset("qm9", split="train", properties=["alpha", "gap"])
    assert len(ds) == 100_000 and ds[0].y.shape == (1, 2)
