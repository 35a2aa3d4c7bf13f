"""Tests for moldiff/geometry.py: zero centre-of-mass maths and random rotations."""

from __future__ import annotations

import pytest
import torch

from moldiff.geometry import (
    assert_zero_com,
    num_atoms_per_graph,
    random_rotation,
    remove_mean,
    rotate_batch,
    sample_zero_com_gaussian,
)

BATCH = torch.tensor([0, 0, 0, 1, 1, 2])


def means(pos: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    n = torch.bincount(batch).to(pos.dtype)
    return torch.zeros(len(n), 3, dtype=pos.dtype).index_add_(0, batch, pos) / n[:, None]


def pairwise(pos: torch.Tensor) -> torch.Tensor:
    return torch.cdist(pos, pos)


def test_remove_mean_exact_values():
    pos = torch.tensor([[1.0, 2, 3], [3, 2, 1], [0, 0, 0]], dtype=torch.float64)
    out = remove_mean(pos, torch.tensor([0, 0, 1]))
    assert out.tolist() == [[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]


def test_remove_mean_zero_com_idempotent_and_shape_preserving(dtype, device):
    pos = torch.randn(6, 3, dtype=dtype, device=device)
    batch = BATCH.to(device)
    out = remove_mean(pos, batch)
    assert out.dtype == dtype and out.device.type == device.type
    torch.testing.assert_close(means(out.cpu(), BATCH), torch.zeros(3, 3, dtype=dtype), rtol=0, atol=1e-6)
    torch.testing.assert_close(remove_mean(out, batch), out)
    torch.testing.assert_close(pairwise(out[:3]), pairwise(pos[:3]))  # only a translation per molecule
    torch.testing.assert_close(remove_mean(pos, batch, 3), out)


def test_remove_mean_with_explicit_num_graphs_and_empty():
    pos = torch.randn(2, 3)
    out = remove_mean(pos, torch.tensor([1, 1]), num_graphs=3)  # molecule 0 and 2 empty
    torch.testing.assert_close(out.sum(0), torch.zeros(3), rtol=0, atol=1e-6)
    assert remove_mean(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0, 3)


def test_sample_zero_com_gaussian(dtype):
    g = torch.Generator().manual_seed(0)
    eps = sample_zero_com_gaussian(BATCH, 3, g, dtype)
    assert eps.shape == (6, 3) and eps.dtype == dtype
    torch.testing.assert_close(means(eps, BATCH), torch.zeros(3, 3, dtype=dtype), rtol=0, atol=1e-6)
    assert torch.equal(eps, sample_zero_com_gaussian(BATCH, 3, torch.Generator().manual_seed(0), dtype))
    assert not torch.equal(eps, sample_zero_com_gaussian(BATCH, 3, torch.Generator().manual_seed(1), dtype))
    assert (eps[5] == 0).all()  # a single-atom molecule has no degrees of freedom


def test_sample_zero_com_gaussian_variance():
    """Projected noise has variance (n - 1) / n per coordinate."""
    batch = torch.zeros(4, dtype=torch.long)
    eps = torch.stack([sample_zero_com_gaussian(batch) for _ in range(4000)])
    assert float(eps.var()) == pytest.approx(3 / 4, rel=0.05)


def test_assert_zero_com():
    pos = remove_mean(torch.randn(6, 3), BATCH)
    assert_zero_com(pos, BATCH)
    with pytest.raises(ValueError, match="not centred"):
        assert_zero_com(pos + torch.tensor([0.1, 0.0, 0.0]), BATCH)
    assert_zero_com(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("reflect", [False, True])
def test_random_rotation_is_orthogonal(reflect, dtype):
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        r = random_rotation(dtype, g, reflect=reflect)
        assert r.shape == (3, 3) and r.dtype == dtype
        torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=dtype), rtol=0, atol=1e-6)
        assert float(torch.det(r.double())) == pytest.approx(-1.0 if reflect else 1.0, abs=1e-6)


def test_random_rotation_seeded():
    a = random_rotation(generator=torch.Generator().manual_seed(3))
    b = random_rotation(generator=torch.Generator().manual_seed(3))
    c = random_rotation(generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rotate_batch_preserves_internal_geometry():
    pos = remove_mean(torch.randn(6, 3, dtype=torch.float64), BATCH)
    out = rotate_batch(pos, BATCH, torch.Generator().manual_seed(0))
    for b in range(3):
        m = BATCH == b
        torch.testing.assert_close(pairwise(out[m]), pairwise(pos[m]))
    torch.testing.assert_close(means(out, BATCH), torch.zeros(3, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not torch.allclose(out[:3], pos[:3])


def test_rotate_batch_independent_rotation_per_molecule():
    """Two copies of the same molecule get different rotations."""
    mol = torch.randn(3, 3, dtype=torch.float64)
    out = rotate_batch(
        torch.cat([mol, mol]), torch.tensor([0, 0, 0, 1, 1, 1]), torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(out[:3], out[3:])


def test_num_atoms_per_graph():
    assert num_atoms_per_graph(BATCH).tolist() == [3, 2, 1]
    assert num_atoms_per_graph(BATCH, 5).tolist() == [3, 2, 1, 0, 0]
