"""The categorical atom-type process inside EquivariantDiffusion: loss, equivariance, sampling, overfit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.config import ExperimentConfig
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import remove_mean, sample_zero_com_gaussian
from moldiff.models import build_model
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.sampling.sampler import SAMPLERS, Sampler

K = 5


def categorical_process(dtype=torch.float32, hidden_nf=16, n_layers=2, timesteps=1000, param="x0", seed=0):
    torch.manual_seed(seed)
    schedule = NoiseSchedule("polynomial_2", timesteps)
    net = EGNNDenoiser(K, hidden_nf=hidden_nf, n_layers=n_layers)
    prior = torch.tensor([0.5, 0.35, 0.06, 0.08, 0.01])
    proc = EquivariantDiffusion(net, schedule, K, include_charges=False, parameterization=Parameterization(param),
                                weighting=LossWeighting("snr_clamp", 0.05, 1.5),
                                type_process=CategoricalDiffusion(K, schedule, prior=prior))
    return proc.to(dtype)


def randomize_(module, std=0.2):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def test_needs_no_charge_channel_and_matching_classes():
    sched = NoiseSchedule("polynomial_2", 100)
    with pytest.raises(ValueError, match="include_charges"):
        EquivariantDiffusion(EGNNDenoiser(K + 1, hidden_nf=8, n_layers=1), sched, K, include_charges=True,
                             type_process=CategoricalDiffusion(K, sched))
    with pytest.raises(ValueError, match="classes"):
        EquivariantDiffusion(EGNNDenoiser(K, hidden_nf=8, n_layers=1), sched, K, include_charges=False,
                             type_process=CategoricalDiffusion(K + 1, sched))
    with pytest.raises(ValueError, match="include_charges"):
        ExperimentConfig.from_dict({"diffusion": {"atom_types": "categorical"}})


def test_built_from_config_with_the_data_prior():
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 8, "n_layers": 1},
                                      "diffusion": {"atom_types": "categorical", "include_charges": False,
                                                    "parameterization": "x0", "loss_weighting": "snr_clamp"}})
    proc = build_model(cfg, K, type_prior=torch.tensor([4.0, 3.0, 1.0, 1.0, 1.0]))
    assert proc.categorical_types and proc.feature_dim == K
    torch.testing.assert_close(proc.type_process.prior, torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1], dtype=torch.float64))
    assert "type_process.prior" in proc.state_dict()


@pytest.mark.parametrize("param", ["eps", "x0"])
def test_loss_is_e3_invariant_and_differentiable(param, float64, make_batch):
    proc = categorical_process(torch.float64, param=param)
    randomize_(proc.denoiser)
    mol = make_batch((4, 3, 5), dtype=torch.float64, seed=1)
    mol = replace(mol, atomic_numbers=mol.atomic_numbers[:, :0])
    proc.train()
    t_int = torch.tensor([3, 300, 900])
    eps_pos = sample_zero_com_gaussian(mol.batch, 3, torch.Generator().manual_seed(5), torch.float64)
    eps_h = torch.zeros(mol.pos.shape[0], K, dtype=torch.float64)

    def loss(pos, eps_pos):
        # the same generator state each call: the same categorical corruption of the types
        return proc.loss(replace(mol, pos=pos), t_int=t_int, noise=(eps_pos, eps_h),
                         generator=torch.Generator().manual_seed(7)).loss

    scale = loss(mol.pos, eps_pos).detach()
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert_equivariant(lambda p, e: loss(p, e) / scale, args_in=[mol.pos, eps_pos],
                       irreps_in=["cartesian_points", "1o"], irreps_out=[None], tolerance=1e-9)
    loss(mol.pos, eps_pos).sum().backward()
    assert all(p.grad is not None for p in proc.denoiser.parameters() if p.requires_grad)


def test_denoise_positions_equivariant_and_type_logits_invariant(float64, make_batch):
    proc = categorical_process(torch.float64)
    randomize_(proc.denoiser)
    mol = make_batch((4, 3), dtype=torch.float64, seed=2)
    h = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 2, 3, 0, 1]), K).double() / 4
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)

    def f(pos):
        eps_pos, logits = proc.denoise(remove_mean(pos, mol.batch, 2), h, t, mol.batch)
        return eps_pos, logits

    assert_equivariant(f, args_in=[mol.pos], irreps_in=["cartesian_points"], irreps_out=["1o", f"{K}x0e"],
                       tolerance=1e-9)


@pytest.mark.parametrize("method", SAMPLERS)
def test_every_sampler_draws_valid_types_reproducibly(method):
    proc = categorical_process(timesteps=100)
    randomize_(proc.denoiser, 0.1)
    a = Sampler(proc).sample([3, 5], steps=10, seed=4, method=method)
    b = Sampler(proc).sample([3, 5], steps=10, seed=4, method=method)
    assert torch.equal(a.types, b.types) and torch.equal(a.pos, b.pos)
    assert a.types.shape == (8,) and int(a.types.min()) >= 0 and int(a.types.max()) < K
    assert torch.isfinite(a.pos).all()
    torch.testing.assert_close(remove_mean(a.pos, a.batch, 2), a.pos, rtol=0, atol=1e-5)


def test_an_eps_fn_drives_the_type_draws():
    """With categorical types an eps_fn (e.g. guidance) replaces the network call, logits included."""
    proc = categorical_process(timesteps=100)

    def favour_class_2(zp, zh, t):
        logits = torch.full((zh.shape[0], K), -30.0)
        logits[:, 2] = 30.0
        return torch.zeros_like(zp), logits

    out = Sampler(proc).sample([3, 4], steps=4, seed=0, eps_fn=favour_class_2)
    assert out.types.tolist() == [2] * 7


def test_overfit_one_composition(make_batch, fit_batch):
    """Trained on one 5-atom molecule, the categorical model regenerates its composition."""
    torch.set_num_threads(1)
    proc = categorical_process(hidden_nf=32, n_layers=2, timesteps=100, seed=1)
    mol = make_batch((5,) * 8, center=True, seed=3)
    types = torch.tensor([1, 0, 0, 3, 0] * 8)  # C H H O H, repeated
    mol = replace(mol, one_hot=torch.nn.functional.one_hot(types, K).float(), atomic_numbers=mol.atomic_numbers[:, :0],
                  pos=remove_mean(mol.pos[:5].repeat(8, 1), mol.batch, 8))
    fit_batch(proc, mol, steps=250, lr=3e-3, seed=0).eval()
    out = Sampler(proc).sample([5] * 16, steps=50, seed=0, method="dpm2sde")
    hits = sum(sorted(t.tolist()) == [0, 0, 0, 1, 3] for t, _ in out.split())
    assert hits >= 12, hits
