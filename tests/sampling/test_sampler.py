"""Tests for moldiff/sampling/sampler.py: step grid, shapes, zero CoM, seeds, chain, errors."""

from __future__ import annotations

import pytest
import torch

from moldiff.geometry import assert_zero_com
from moldiff.sampling.sampler import SAMPLERS, SampleOutput, Sampler, timestep_grid

T = 20
K = 5


@pytest.fixture
def sampler(make_process):
    return Sampler(make_process(timesteps=T))


# ---------------------------------------------------------------------------- timestep_grid
@pytest.mark.parametrize(
    ("timesteps", "steps", "expected"),
    [
        (1000, 4, [1000, 750, 500, 250, 0]),
        (10, 10, list(range(10, -1, -1))),
        (10, 3, [10, 7, 3, 0]),
        (10, 1, [10, 0]),
        (1, 1, [1, 0]),
        (1000, 3, [1000, 667, 333, 0]),
    ],
)
def test_timestep_grid_values(timesteps, steps, expected):
    grid = timestep_grid(timesteps, steps)
    assert grid.dtype == torch.long
    assert grid.tolist() == expected


@pytest.mark.parametrize("steps", [1, 2, 7, 99, 100, 333, 999, 1000])
def test_timestep_grid_strictly_decreasing_from_T_to_0(steps):
    grid = timestep_grid(1000, steps)
    assert grid.shape == (steps + 1,)
    assert int(grid[0]) == 1000 and int(grid[-1]) == 0
    assert (grid.diff() < 0).all()


@pytest.mark.parametrize("steps", [0, -1, 1001, 5000])
def test_timestep_grid_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        timestep_grid(1000, steps)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("method", SAMPLERS)
def test_output_shapes_and_zero_com(method, sampler):
    out = sampler.sample([3, 4, 5], steps=5, seed=0, method=method)
    assert isinstance(out, SampleOutput)
    assert out.num_graphs == 3 and out.chain is None
    assert out.pos.shape == (12, 3) and out.types.shape == out.charges.shape == out.batch.shape == (12,)
    assert out.types.dtype == out.charges.dtype == out.batch.dtype == torch.long
    assert out.batch.tolist() == [0] * 3 + [1] * 4 + [2] * 5
    assert ((0 <= out.types) & (out.types < K)).all()
    assert torch.isfinite(out.pos).all()
    assert_zero_com(out.pos, out.batch, tol=1e-5)


@pytest.mark.parametrize("method", SAMPLERS)
def test_dtype_and_device(method, dtype, device, make_process):
    proc = make_process(timesteps=T, dtype=dtype).to(device)
    out = Sampler(proc).sample([2, 3], steps=3, seed=0, method=method)
    assert out.pos.dtype == dtype and out.pos.device.type == device.type
    assert_zero_com(out.pos, out.batch, tol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("method", SAMPLERS)
def test_same_seed_same_output_different_seed_different(method, sampler):
    a = sampler.sample([3, 4], steps=4, seed=7, method=method)
    b = sampler.sample([3, 4], steps=4, seed=7, method=method)
    c = sampler.sample([3, 4], steps=4, seed=8, method=method)
    assert torch.equal(a.pos, b.pos) and torch.equal(a.types, b.types) and torch.equal(a.charges, b.charges)
    assert not torch.allclose(a.pos, c.pos)


def test_seed_does_not_touch_global_rng(sampler):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sampler.sample([3], steps=2, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("steps", [0, -3, T + 1])
def test_bad_steps_raise(steps, sampler):
    with pytest.raises(ValueError, match="steps"):
        sampler.sample([3], steps=steps)


def test_default_steps_is_T(sampler):
    calls = []

    def eps_fn(zp, zh, t):
        calls.append(t)
        return torch.zeros_like(zp), torch.zeros_like(zh)

    sampler.sample([3], eps_fn=eps_fn)
    assert len(calls) == T + 1  # T reverse steps + the final p(x, h | z_0)
    assert [round(float(t[0]) * T) for t in calls] == list(range(T, 0, -1)) + [0]


@pytest.mark.parametrize("bad", [[], [0], [3, -1], [[3, 4]]])
def test_bad_num_atoms_raise(bad, sampler):
    with pytest.raises(ValueError, match="num_atoms"):
        sampler.sample(bad, steps=2)


def test_unknown_method_raises_listing_allowed(sampler):
    with pytest.raises(ValueError, match="unknown sampler") as exc:
        sampler.sample([3], steps=2, method="ddim-nonexistent")
    for name in SAMPLERS:
        assert name in str(exc.value)


@pytest.mark.parametrize(("steps", "keep"), [(5, 1), (5, 3), (5, 5), (1, 1)])
def test_keep_chain_length(steps, keep, sampler):
    out = sampler.sample([3, 2], steps=steps, seed=0, keep_chain=keep)
    assert isinstance(out.chain, list) and len(out.chain) == keep
    for pos, types in out.chain:
        assert pos.shape == (5, 3) and types.shape == (5,)
        assert_zero_com(pos, out.batch, tol=1e-5)


def test_keep_chain_does_not_change_samples(sampler):
    a = sampler.sample([3, 2], steps=4, seed=1)
    b = sampler.sample([3, 2], steps=4, seed=1, keep_chain=2)
    assert torch.equal(a.pos, b.pos) and torch.equal(a.types, b.types)


def test_conditional_sampling_uses_context(make_process):
    proc = make_process(timesteps=T, context_nf=2)
    with torch.no_grad():
        for p in proc.denoiser.parameters():
            p.normal_(0.0, 0.2)
    sampler = Sampler(proc)
    ctx = torch.zeros(2, 2)
    a = sampler.sample([3, 3], steps=3, seed=0, context=ctx)
    b = sampler.sample([3, 3], steps=3, seed=0, context=ctx + 1)
    assert a.pos.shape == (6, 3) and not torch.allclose(a.pos, b.pos)
    with pytest.raises(ValueError, match="context"):
        sampler.sample([3, 3], steps=3, seed=0)


def test_split_per_molecule(sampler):
    out = sampler.sample([3, 1, 2], steps=2, seed=0)
    parts = out.split()
    assert [len(t) for t, _ in parts] == [3, 1, 2]
    assert [tuple(p.shape) for _, p in parts] == [(3, 3), (1, 3), (2, 3)]
    torch.testing.assert_close(torch.cat([p for _, p in parts]), out.pos)


def test_single_atom_molecule(sampler):
    out = sampler.sample([1], steps=2, seed=0)
    torch.testing.assert_close(out.pos, torch.zeros(1, 3), rtol=0, atol=1e-6)
