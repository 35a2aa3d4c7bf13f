import numpy as np
import pytest
import torch

from moldiff.data import MolLoader, get_split, iter_batches, load_qm9
from moldiff.data.arrays import MoleculeArrays
from moldiff.geometry import assert_zero_com
from moldiff.types import MolBatch


def _toy(n=7):
    rng = np.random.default_rng(0)
    symbols = [["C"] + ["H"] * (k % 3) + ["N"] * (k % 2) for k in range(n)]
    mols = [(s, rng.normal(size=(len(s), 3)) + 5) for s in symbols]
    return MoleculeArrays.from_molecules(mols, properties={"y": np.arange(n, dtype=float)})


def test_batch_content_matches_per_molecule_construction():
    arrays = _toy()
    loader = MolLoader(
        arrays, batch_size=3, shuffle=False, context_keys=["y"], context_norms={"y": (1.0, 2.0)}
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and [b.num_graphs for b in batches] == [3, 3, 1]
    b = batches[1]
    assert isinstance(b, MolBatch) and b.one_hot.shape[1] == 3 and b.pos.dtype == torch.float32
    assert_zero_com(b.pos, b.batch)
    for g, row in enumerate([3, 4, 5]):
        symbols, pos = arrays.molecule(row)
        sel = b.batch == g
        np.testing.assert_allclose(b.pos[sel].numpy(), pos - pos.mean(0), atol=1e-5)
        assert [arrays.elements[i] for i in b.one_hot[sel].argmax(1)] == symbols
        assert b.atomic_numbers[sel, 0].tolist() == [{"H": 1, "C": 6, "N": 7}[s] for s in symbols]
    assert b.context.tolist() == [[1.0], [1.5], [2.0]]


def test_shuffle_deterministic_per_seed_and_epoch():
    arrays = _toy(20)
    loader = MolLoader(arrays, batch_size=4, seed=5)
    names = lambda bs: [b.pos.sum().item() for b in bs]  # noqa: E731
    e0, e1 = list(loader.iter_batches(0)), list(loader.iter_batches(1))
    assert names(e0) == names(MolLoader(arrays, batch_size=4, seed=5).iter_batches(0))
    assert names(e0) != names(e1)
    assert names(list(loader.iter_batches(1, start=2))) == names(e1[2:])  # exact resumption
    loader.set_epoch(1)
    assert names(list(loader)) == names(e1)
    assert names(list(iter_batches(arrays, batch_size=4, seed=5, epoch=1))) == names(e1)
    assert sorted(np.concatenate([loader.epoch_order(3)]).tolist()) == list(range(20))


def test_drop_last_rows_remove_h_and_errors():
    arrays = _toy(10)
    assert len(MolLoader(arrays, batch_size=4, drop_last=True)) == 2
    loader = MolLoader(arrays, rows=[1, 3], batch_size=8, shuffle=False, remove_h=True)
    (b,) = list(loader)
    assert loader.elements == ("C", "N") and b.one_hot.shape == (4, 2) and b.atomic_numbers.min() == 6
    with pytest.raises(ValueError, match="context_norms"):
        MolLoader(arrays, context_keys=["y"])
    with pytest.raises(ValueError, match="unknown context"):
        MolLoader(arrays, context_keys=["z"], context_norms={"z": (0, 1)})
    with pytest.raises(ValueError, match="out of range"):
        MolLoader(arrays, rows=[10])
    with pytest.raises(ValueError, match="batch_size"):
        MolLoader(arrays, batch_size=0)


def test_qm9_epoch_is_fast():
    import time

    qm9 = load_qm9(progress=False)
    loader = MolLoader(qm9, get_split("train"), batch_size=64, seed=0)
    t = time.perf_counter()
    batches = loader.iter_batches(0)
    sizes = [next(batches).num_graphs for _ in range(200)]
    per_batch = (time.perf_counter() - t) / 200
    assert sizes == [64] * 200 and per_batch < 0.02
