"""Tests for moldiff/nn/denoiser.py: edges, E(3)/permutation equivariance, batching, context."""

from __future__ import annotations

import pytest
import torch
from e3nn.util.test import assert_equivariant
from hypothesis import given, settings
from hypothesis import strategies as st

from moldiff.nn.denoiser import EGNNDenoiser, fully_connected_edges
from moldiff.types import Denoiser

TOL = 1e-9


def brute_force_edges(batch: torch.Tensor) -> set[tuple[int, int]]:
    n = len(batch)
    return {(i, j) for i in range(n) for j in range(n) if i != j and int(batch[i]) == int(batch[j])}


def batch_from_counts(counts) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))


def randomize_(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def permutation_within_molecules(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    perm = torch.arange(len(batch))
    for b in batch.unique():
        idx = (batch == b).nonzero().flatten()
        perm[idx] = idx[torch.randperm(len(idx), generator=gen)]
    return perm


# ---------------------------------------------------------------------------- fully_connected_edges
@pytest.mark.parametrize("counts", [[1], [2], [3, 4, 5], [1, 1, 1], [5, 1, 2], [29], [1, 29, 1]])
def test_fully_connected_edges_exact_set(counts):
    batch = batch_from_counts(counts)
    ei = fully_connected_edges(batch)
    assert ei.dtype == torch.long and ei.shape == (2, sum(n * (n - 1) for n in counts))
    pairs = [tuple(p) for p in ei.t().tolist()]
    assert len(set(pairs)) == len(pairs), "duplicate edges"
    assert set(pairs) == brute_force_edges(batch)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6))
def test_fully_connected_edges_property(counts):
    batch = batch_from_counts(counts)
    ei = fully_connected_edges(batch)
    row, col = ei
    assert (row != col).all(), "self loop"
    assert (batch[row] == batch[col]).all(), "cross-molecule edge"
    assert {tuple(p) for p in ei.t().tolist()} == brute_force_edges(batch)


def test_fully_connected_edges_empty_and_sorted_rows():
    assert fully_connected_edges(torch.zeros(0, dtype=torch.long)).shape == (2, 0)
    row = fully_connected_edges(batch_from_counts([3, 2]))[0]
    assert torch.equal(row, torch.sort(row).values)  # grouped by receiving atom


# ---------------------------------------------------------------------------- E(3) equivariance
@pytest.fixture
def inputs(float64, make_batch):
    mol = make_batch((4, 3, 5), context_nf=2, dtype=torch.float64)
    h = torch.cat([mol.one_hot / 4, mol.charges / 10], dim=1)
    t = torch.tensor([0.1, 0.5, 0.9])
    return mol, h, t


@pytest.mark.parametrize("node_projection", [True, False])
def test_denoiser_e3_equivariant(node_projection, inputs, make_denoiser):
    mol, h, t = inputs
    net = randomize_(make_denoiser(n_layers=2, node_projection=node_projection, dtype=torch.float64))
    errors = assert_equivariant(
        lambda pos, h, t, batch: net(pos, h, t, batch),
        args_in=[mol.pos, h, t, mol.batch],
        irreps_in=["cartesian_points", None, None, None],
        irreps_out=["1o", None],
        tolerance=TOL,
    )
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}


def test_denoiser_e3_equivariant_with_context(inputs, make_denoiser):
    mol, h, t = inputs
    net = randomize_(make_denoiser(context_nf=2, dtype=torch.float64))
    assert_equivariant(
        lambda pos, h, t, batch, ctx: net(pos, h, t, batch, ctx),
        args_in=[mol.pos, h, t, mol.batch, mol.context],
        irreps_in=["cartesian_points", None, None, None, None],
        irreps_out=["1o", None],
        tolerance=TOL,
    )


def test_denoiser_eps_pos_must_not_be_declared_as_points(inputs, make_denoiser):
    """eps_pos is a translation-*invariant* vector: declaring it ``cartesian_points`` must fail."""
    mol, h, t = inputs
    net = randomize_(make_denoiser(dtype=torch.float64))
    with pytest.raises(AssertionError, match="did_translate=True"):
        assert_equivariant(
            lambda pos, h, t, batch: net(pos, h, t, batch),
            args_in=[mol.pos, h, t, mol.batch],
            irreps_in=["cartesian_points", None, None, None],
            irreps_out=["cartesian_points", None],
            tolerance=TOL,
        )


def test_node_projection_same_outputs(inputs, make_denoiser):
    mol, h, t = inputs
    a = randomize_(make_denoiser(n_layers=2, node_projection=True, dtype=torch.float64))
    b = make_denoiser(n_layers=2, node_projection=False, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    for x, y in zip(a(mol.pos, h, t, mol.batch), b(mol.pos, h, t, mol.batch), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_eps_pos_zero_com_per_molecule(inputs, make_denoiser):
    mol, h, t = inputs
    eps_pos, eps_h = randomize_(make_denoiser(dtype=torch.float64))(mol.pos, h, t, mol.batch)
    com = torch.zeros(mol.num_graphs, 3).index_add_(0, mol.batch, eps_pos)
    torch.testing.assert_close(com, torch.zeros_like(com), rtol=0, atol=1e-12)
    assert eps_h.shape == h.shape


# ---------------------------------------------------------------------------- permutations / batching
def test_denoiser_permutation_equivariant(inputs, make_denoiser):
    mol, h, t = inputs
    net = randomize_(make_denoiser(n_layers=2, dtype=torch.float64))
    perm = permutation_within_molecules(mol.batch, torch.Generator().manual_seed(3))
    assert not torch.equal(perm, torch.arange(len(perm)))
    assert torch.equal(mol.batch[perm], mol.batch)  # batch stays sorted
    out = net(mol.pos, h, t, mol.batch)
    out_p = net(mol.pos[perm], h[perm], t, mol.batch)
    for a, b in zip(out, out_p, strict=True):
        torch.testing.assert_close(a[perm], b, rtol=1e-12, atol=1e-12)


def test_batched_equals_one_by_one(inputs, make_denoiser):
    mol, h, t = inputs
    net = randomize_(make_denoiser(n_layers=2, context_nf=2, dtype=torch.float64))
    eps_pos, eps_h = net(mol.pos, h, t, mol.batch, mol.context)
    for b in range(mol.num_graphs):
        m = mol.batch == b
        single = net(
            mol.pos[m],
            h[m],
            t[b : b + 1],
            torch.zeros(int(m.sum()), dtype=torch.long),
            mol.context[b : b + 1],
        )
        torch.testing.assert_close(single[0], eps_pos[m], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(single[1], eps_h[m], rtol=1e-12, atol=1e-12)


def test_molecules_do_not_interact(inputs, make_denoiser):
    """Moving molecule 0 changes nothing in molecules 1 and 2."""
    mol, h, t = inputs
    net = randomize_(make_denoiser(dtype=torch.float64))
    pos2 = mol.pos.clone()
    pos2[mol.batch == 0] += torch.randn(int((mol.batch == 0).sum()), 3)
    a, b = net(mol.pos, h, t, mol.batch), net(pos2, h, t, mol.batch)
    rest = mol.batch != 0
    torch.testing.assert_close(a[0][rest], b[0][rest], rtol=0, atol=0)
    assert not torch.allclose(a[0][~rest], b[0][~rest])


def test_time_shape_b_or_b1(inputs, make_denoiser):
    mol, h, t = inputs
    net = make_denoiser(dtype=torch.float64)
    for x, y in zip(net(mol.pos, h, t, mol.batch), net(mol.pos, h, t[:, None], mol.batch), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_time_changes_output(inputs, make_denoiser):
    mol, h, t = inputs
    net = randomize_(make_denoiser(dtype=torch.float64))
    assert not torch.allclose(net(mol.pos, h, t, mol.batch)[1], net(mol.pos, h, 1 - t, mol.batch)[1])


# ---------------------------------------------------------------------------- context
def test_context_changes_output(inputs, make_denoiser):
    mol, h, t = inputs
    net = randomize_(make_denoiser(context_nf=2, dtype=torch.float64))
    a = net(mol.pos, h, t, mol.batch, mol.context)
    b = net(mol.pos, h, t, mol.batch, mol.context + 1.0)
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    assert a[1].shape == h.shape  # context channels are sliced off


@pytest.mark.parametrize("bad", ["none", "wide", "narrow", "rows", "flat"])
def test_wrong_context_shape_raises(bad, inputs, make_denoiser):
    mol, h, t = inputs
    net = make_denoiser(context_nf=2, dtype=torch.float64)
    ctx = {
        "none": None,
        "wide": torch.randn(3, 3),
        "narrow": torch.randn(3, 1),
        "rows": torch.randn(2, 2),
        "flat": torch.randn(6),
    }[bad]
    with pytest.raises(ValueError, match="context"):
        net(mol.pos, h, t, mol.batch, ctx)


# ---------------------------------------------------------------------------- misc
def test_implements_denoiser_protocol(make_denoiser):
    assert isinstance(make_denoiser(), Denoiser)


def test_output_shapes_dtype_device(dtype, device, make_batch, make_denoiser):
    mol = make_batch((3, 4), dtype=dtype, device=device)
    h = torch.cat([mol.one_hot, mol.charges], 1)
    net = make_denoiser(dtype=dtype).to(device)
    eps_pos, eps_h = net(mol.pos, h, torch.rand(2, dtype=dtype, device=device), mol.batch)
    assert eps_pos.shape == (7, 3) and eps_h.shape == (7, 6)
    assert eps_pos.dtype == eps_h.dtype == dtype and eps_pos.device.type == device.type


def test_non_finite_outputs_are_zeroed(make_batch, make_denoiser):
    mol = make_batch((3,))
    h = torch.cat([mol.one_hot, mol.charges], 1)
    pos = mol.pos.clone()
    pos[0, 0] = float("nan")
    eps_pos, eps_h = make_denoiser()(pos, h, torch.tensor([0.5]), mol.batch)
    assert torch.isfinite(eps_pos).all() and torch.isfinite(eps_h).all()


def test_egnn_input_width_includes_time_and_context():
    net = EGNNDenoiser(6, context_nf=2, hidden_nf=8, n_layers=1)
    assert net.egnn.embedding.in_features == 6 + 1 + 2
    assert net.egnn.embedding_out.out_features == 6 + 1 + 2
