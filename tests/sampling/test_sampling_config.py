"""SamplingConfig (the one way in), the ancestral solver, and the loose arguments that build a config."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import remove_mean, sample_zero_com_gaussian
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.sampling.config import MAX_SEED, SamplingConfig
from moldiff.sampling.sampler import SAMPLERS, Sampler, timestep_grid
from moldiff.sampling.solvers import grid_gammas, solve

T = 30
COUNTS = [3, 5, 4]


def _process(dtype: torch.dtype = torch.float32) -> EquivariantDiffusion:
    torch.manual_seed(0)
    return EquivariantDiffusion(EGNNDenoiser(6, hidden_nf=16, n_layers=2), NoiseSchedule("polynomial_2", T),
                                5).to(dtype).eval()


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "euler"}, "unknown sampler 'euler'; allowed"),
    ({"method": "dpm2", "eta": 0.5}, "eta is a ddim option"),
    ({"method": "ddim", "eta": 1.5}, "eta must be between 0 and 1"),
    ({"steps": 0}, "steps"),
    ({"seed": -1}, "seed"),
    ({"seed": MAX_SEED + 1}, "seed"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_atoms_per_batch": 0}, "max_atoms_per_batch"),
    ({"max_edges_per_batch": -2}, "max_edges_per_batch"),
])
def test_config_is_validated_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_config_steps_against_T_and_frozen():
    assert SamplingConfig().num_steps(T) == T and SamplingConfig(steps=7).num_steps(T) == 7
    with pytest.raises(ValueError, match=f"T={T}"):
        SamplingConfig(steps=T + 1).num_steps(T)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingConfig().steps = 3  # type: ignore[misc]
    assert {SamplingConfig(m).method for m in SAMPLERS} == set(SAMPLERS)


@pytest.mark.parametrize("method", SAMPLERS)
def test_config_and_loose_arguments_sample_the_same(method):
    sampler = Sampler(_process())
    eta = 0.3 if method == "ddim" else 0.0
    a = sampler.sample(COUNTS, steps=4, seed=2, method=method, eta=eta, keep_chain=2)
    b = sampler.sample(COUNTS, seed=2, keep_chain=2, config=SamplingConfig(method, steps=4, eta=eta, seed=None))
    assert torch.equal(a.pos, b.pos) and torch.equal(a.types, b.types)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a.chain, b.chain, strict=True)) and len(a.chain) == 2
    c = sampler.sample_batched(COUNTS, max_atoms_per_batch=8, seed=5, steps=3, method=method)
    d = sampler.sample_batched(COUNTS, config=SamplingConfig(method, steps=3, seed=5, max_atoms_per_batch=8))
    assert torch.equal(c.pos, d.pos)
    with pytest.raises(ValueError, match="not both"):
        sampler.sample(COUNTS, steps=4, config=SamplingConfig(method))
    with pytest.raises(ValueError, match="not both"):
        sampler.sample_batched(COUNTS, steps=3, config=SamplingConfig(method))


def test_generic_ancestral_step_is_the_process_step():
    """``solve('ancestral')`` without a ``step_fn`` (the Gaussian formula) equals EDM's ``p(z_s | z_t)``."""
    proc = _process(torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(COUNTS))
    grid = timestep_grid(T, 6)
    g = torch.Generator().manual_seed(1)
    z_T = (sample_zero_com_gaussian(batch, 3, g, torch.float64), torch.randn(len(batch), 6, generator=g,
                                                                              dtype=torch.float64))
    noises = [proc.sample_noise(batch, 3, torch.float64, g) for _ in range(6)]

    def time_at(k):
        return torch.full((3,), int(grid[k]) / T, dtype=torch.float64)

    def eps_at(z, k):
        return proc.denoise(z[0], z[1], time_at(k), batch)

    def step_fn(k, z, eps, noise):
        return proc.p_zs_given_zt(z[0], z[1], time_at(k), time_at(k + 1), batch, 3, None, noise=noise, eps=eps)

    gam = grid_gammas(proc.schedule, grid)
    exact = solve("ancestral", z_T, eps_at, gam, noise_fn=lambda k: noises[k], step_fn=step_fn)
    generic = solve("ancestral", z_T, eps_at, gam, noise_fn=lambda k: noises[k],
                    project=lambda z: (remove_mean(z[0], batch, 3), z[1]))
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(exact, generic, strict=True))
    with pytest.raises(ValueError, match="noise_fn"):
        solve("ancestral", z_T, eps_at, gam)


def test_pipeline_takes_one_config(tmp_path):
    from moldiff.pipeline import load_model

    model = load_model("qm9")
    loose = model.sample_raw(3, steps=4, seed=7, method="dpm2sde", max_atoms_per_batch=20)
    cfg = SamplingConfig("dpm2sde", steps=4, seed=7, max_atoms_per_batch=20)
    one = [m for _, b in model.iter_samples(3, config=cfg) for m in b]
    assert all(a[0] == b[0] and (a[1] == b[1]).all() for a, b in zip(loose, one, strict=True))
    with pytest.raises(ValueError, match="not both"):
        model.iter_samples(3, steps=4, config=cfg)
    with pytest.raises(ValueError, match=f"T={model.process.timesteps}"):
        model.iter_samples(3, config=SamplingConfig(steps=10**6))
