"""EDM's invariant property classifier: shapes, E(3) invariance (e3nn, float64), permutations, training."""

from __future__ import annotations

import numpy as np
import torch
from e3nn.util.test import assert_equivariant

from moldiff.data.arrays import MoleculeArrays
from moldiff.nn.property_predictor import InvariantGCL, PropertyPredictor
from moldiff.training.property import (
    fit_num_nodes_baseline,
    load_predictor,
    predict_molecules,
    predict_rows,
    save_predictor,
    train_property_predictor,
)

TOL = 1e-9


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 5, 4])
    batch = torch.repeat_interleave(torch.arange(3), counts)
    pos = torch.randn(int(counts.sum()), 3, generator=g, dtype=dtype) * 1.5
    one_hot = torch.eye(5, dtype=dtype)[torch.randint(0, 5, (int(counts.sum()),), generator=g)]
    return pos, one_hot, batch


def test_shapes_and_hparams():
    model = PropertyPredictor(5, hidden_nf=8, n_layers=2)
    pos, one_hot, batch = _inputs(torch.float32)
    assert model(pos, one_hot, batch).shape == (3,)
    assert model(pos, one_hot, batch, num_graphs=4).shape == (4,)  # an empty trailing molecule
    assert PropertyPredictor(**model.hparams()).hparams() == model.hparams()
    assert InvariantGCL(8, attention=False).att_mlp is None


def test_invariant_under_e3(float64):
    model = PropertyPredictor(5, hidden_nf=16, n_layers=3).double()
    pos, one_hot, batch = _inputs()
    errors = assert_equivariant(
        lambda pos, one_hot: model(pos, one_hot, batch)[:, None], args_in=[pos, one_hot],
        irreps_in=["cartesian_points", None], irreps_out=["0e"], tolerance=TOL,
    )
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}


def test_leaky_absolute_coordinate_fails_invariance(float64):
    """The check has teeth: adding an absolute coordinate to the output breaks it."""
    model = PropertyPredictor(5, hidden_nf=8, n_layers=1).double()
    pos, one_hot, batch = _inputs()
    try:
        assert_equivariant(lambda p, o: (model(p, o, batch) + p[:3, 0])[:, None], args_in=[pos, one_hot],
                           irreps_in=["cartesian_points", None], irreps_out=["0e"], tolerance=TOL)
    except AssertionError:
        return
    raise AssertionError("a coordinate-dependent output passed the invariance test")


def test_permutation_invariant_within_molecules(float64):
    model = PropertyPredictor(5, hidden_nf=16, n_layers=2).double()
    pos, one_hot, batch = _inputs()
    within = [torch.tensor([2, 0, 1]), 3 + torch.tensor([4, 1, 3, 0, 2]), 8 + torch.tensor([1, 3, 2, 0])]
    perm = torch.cat(within)
    torch.testing.assert_close(model(pos[perm], one_hot[perm], batch), model(pos, one_hot, batch),
                               atol=TOL, rtol=0)


def test_batched_equals_one_by_one(float64):
    model = PropertyPredictor(5, hidden_nf=16, n_layers=2).double()
    pos, one_hot, batch = _inputs()
    full = model(pos, one_hot, batch)
    for b in range(3):
        m = batch == b
        torch.testing.assert_close(model(pos[m], one_hot[m], torch.zeros(int(m.sum()), dtype=torch.long)),
                                   full[b : b + 1], atol=TOL, rtol=0)


def _toy_arrays(n: int = 64) -> MoleculeArrays:
    """Random molecules whose 'alpha' is 4 × (number of atoms): learnable from the sum over nodes."""
    rng = np.random.default_rng(0)
    mols, alpha = [], []
    for _ in range(n):
        k = int(rng.integers(2, 7))
        mols.append((list(rng.choice(["H", "C", "O"], k)), rng.normal(size=(k, 3)) * 1.2))
        alpha.append(4.0 * k)
    return MoleculeArrays.from_molecules(mols, properties={"alpha": alpha})


def test_training_reduces_error_and_round_trips(tmp_path):
    arrays = _toy_arrays()
    rows = np.arange(arrays.num_molecules)
    norm = (float(arrays.properties["alpha"].mean()), 4.0)
    model, info = train_property_predictor(arrays, rows, rows[:16], "alpha", norm, hidden_nf=16, n_layers=2,
                                           epochs=15, batch_size=16, lr=3e-3)
    naive = float(np.mean(np.abs(arrays.properties["alpha"][:16] - norm[0])))
    assert info["val_mae"] < 0.5 * naive and info["epochs"] == 15
    save_predictor(tmp_path / "phi.pt", model, "alpha", norm, arrays.elements, info)
    again, meta = load_predictor(tmp_path / "phi.pt")
    assert meta["key"] == "alpha" and meta["norm"] == list(norm)
    np.testing.assert_allclose(predict_rows(again, arrays, rows[:5], "alpha", norm),
                               predict_rows(model, arrays, rows[:5], "alpha", norm))
    # Generated molecules in another vocabulary order give the same prediction.
    mols = [arrays.molecule(i) for i in range(5)]
    np.testing.assert_allclose(predict_molecules(model, mols, arrays.elements, norm),
                               predict_rows(model, arrays, rows[:5], "alpha", norm), rtol=1e-5, atol=1e-4)


def test_num_nodes_baseline_fits_linear_relation():
    n = np.arange(3, 20)
    predict = fit_num_nodes_baseline(n, 4.0 * n + 1, (45.0, 20.0), steps=800, lr=1e-2)
    assert np.max(np.abs(predict(np.array([5, 15])) - np.array([21.0, 61.0]))) < 2.0
