"""Tests for moldiff/diffusion/parameterization.py and its use by the process (x0 prediction, SNR weighting)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.config import ExperimentConfig
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import remove_mean, sample_zero_com_gaussian
from moldiff.models import build_model


def randomize_(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


@pytest.mark.parametrize("name", ["eps", "x0"])
def test_predictions_are_consistent_with_the_forward_process(name, float64):
    """``z = alpha x0_hat + sigma eps_hat`` for both parameterizations (they name one function)."""
    g = torch.Generator().manual_seed(0)
    gamma = torch.randn(7, 1, generator=g, dtype=torch.float64) * 4
    alpha, sigma = NoiseSchedule.alpha_from_gamma(gamma), NoiseSchedule.sigma_from_gamma(gamma)
    z = (torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64))
    out = (torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64))
    p = Parameterization(name)
    eps, x0 = p.to_eps(out, z, alpha, sigma), p.to_x0(out, z, alpha, sigma)
    for i in range(2):
        torch.testing.assert_close(alpha * x0[i] + sigma * eps[i], z[i], rtol=0, atol=1e-12)
    if name == "eps":
        assert eps[0] is out[0] and eps[1] is out[1]
    else:
        torch.testing.assert_close(x0[0], z[0] + out[0])
        assert x0[1] is out[1]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="parameterization"):
        Parameterization("v")
    with pytest.raises(ValueError, match="loss_weighting"):
        LossWeighting("minsnr")
    with pytest.raises(ValueError, match="lo < hi"):
        LossWeighting("snr_clamp", 2.0, 1.0)


def test_weighting_values():
    snr = torch.tensor([1e-3, 0.5, 1.0, 3.0, 1e5], dtype=torch.float64)
    assert torch.equal(LossWeighting("edm").x0_weight(snr), snr)
    torch.testing.assert_close(LossWeighting("snr_clamp", 0.05, 1.5).x0_weight(snr),
                               torch.tensor([0.05, 0.5, 1.0, 1.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(LossWeighting("snr_clamp", 0.0, 5.0).x0_weight(snr),
                               torch.tensor([1e-3, 0.5, 1.0, 3.0, 5.0], dtype=torch.float64))


def test_snr_weighted_x0_loss_equals_edm_loss_when_the_weight_is_snr(float64, make_process, make_batch):
    """``SNR |x0 - x0_hat|^2 = |eps - eps_hat|^2``: an unclamped SNR weight reproduces EDM's L2 loss exactly."""
    proc = make_process(n_layers=2, dtype=torch.float64)
    randomize_(proc.denoiser)
    mol = make_batch((4, 3, 5), dtype=torch.float64, seed=1)
    proc.train()
    t_int = torch.tensor([1, 300, 999])
    noise = proc.sample_noise(mol.batch, 3, torch.float64, torch.Generator().manual_seed(2))
    edm = proc.loss(mol, t_int=t_int, noise=noise).loss - proc.loss(mol, t_int=t_int, noise=noise).kl_prior
    proc.weighting = LossWeighting("snr_clamp", 0.0, 1e30)
    x0 = proc.loss(mol, t_int=t_int, noise=noise).loss
    torch.testing.assert_close(x0, edm, rtol=1e-9, atol=0)


@pytest.fixture
def x0_process(float64, make_process):
    proc = make_process(n_layers=2, dtype=torch.float64)
    proc.parameterization = Parameterization("x0")
    proc.weighting = LossWeighting("snr_clamp", 0.05, 1.5)
    return randomize_(proc.denoiser) and proc


def test_x0_denoise_is_e3_equivariant(x0_process, make_batch):
    """Rotations and reflections (O(3) via e3nn's parity) act on the noise prediction as on positions."""
    mol = make_batch((4, 3, 5), dtype=torch.float64, seed=3)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    h = torch.randn(mol.pos.shape[0], x0_process.feature_dim, dtype=torch.float64)

    def eps_pos(pos):
        return x0_process.denoise(remove_mean(pos, mol.batch, 3), h, t, mol.batch)[0]

    def x0_pos(pos):
        return x0_process.predict_x0(remove_mean(pos, mol.batch, 3), h, t, mol.batch)[0]

    assert_equivariant(eps_pos, args_in=[mol.pos], irreps_in=["cartesian_points"], irreps_out=["1o"], tolerance=1e-9)
    # x0 lives in the frame of the (centred) input: a translation of the input does not move it
    assert_equivariant(x0_pos, args_in=[mol.pos], irreps_in=["cartesian_points"], irreps_out=["1o"], tolerance=1e-9)


def test_x0_denoise_is_permutation_equivariant(x0_process, make_batch):
    mol = make_batch((5,), dtype=torch.float64, seed=4)
    t = torch.tensor([0.4], dtype=torch.float64)
    pos = remove_mean(mol.pos, mol.batch, 1)
    h = torch.randn(5, x0_process.feature_dim, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = x0_process.denoise(pos, h, t, mol.batch)
    b = x0_process.denoise(pos[perm], h[perm], t, mol.batch)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u[perm], v, rtol=0, atol=1e-12)


def test_x0_loss_is_e3_invariant_with_rotated_noise(x0_process, make_batch):
    mol = make_batch((4, 3, 5), dtype=torch.float64, seed=1)
    x0_process.train()
    t_int = torch.tensor([0, 10, 617])
    gen = torch.Generator().manual_seed(5)
    eps_pos = sample_zero_com_gaussian(mol.batch, 3, gen, torch.float64)
    eps_h = torch.randn(mol.pos.shape[0], x0_process.feature_dim, generator=gen, dtype=torch.float64)

    def loss(pos, eps_pos):
        return x0_process.loss(replace(mol, pos=pos), t_int=t_int, noise=(eps_pos, eps_h)).loss

    scale = loss(mol.pos, eps_pos).detach()
    assert_equivariant(lambda p, e: loss(p, e) / scale, args_in=[mol.pos, eps_pos],
                       irreps_in=["cartesian_points", "1o"], irreps_out=[None], tolerance=1e-9)


def test_x0_model_overfits_a_tiny_batch(make_batch, make_process, fit_batch):
    """The x0-parameterized model learns: its clean-molecule error at fixed probes falls 5x on one batch."""
    proc = make_process(hidden_nf=32, n_layers=2, timesteps=100)
    proc.parameterization = Parameterization("x0")
    proc.weighting = LossWeighting("snr_clamp", 0.05, 1.5)
    mol = make_batch((3, 4, 5), center=True)
    pos, h = proc.normalize(mol)
    gen = torch.Generator().manual_seed(0)
    probes = []
    for _ in range(16):
        t_int = torch.randint(1, 30, (3,), generator=gen)
        noise = proc.sample_noise(mol.batch, 3, torch.float32, gen)
        probes.append((t_int, noise))

    def x0_error() -> float:
        errs = []
        with torch.no_grad():
            for t_int, (ep, eh) in probes:
                t = t_int.float() / 100
                zp, zh = proc.q_sample(pos, h, proc.schedule.gamma(t), mol.batch, ep, eh)
                xp, xh = proc.predict_x0(zp, zh, t, mol.batch)
                errs.append(float(((xp - pos) ** 2).sum() + ((xh - h) ** 2).sum()))
        return sum(errs) / len(errs)

    before = x0_error()
    fit_batch(proc, mol, steps=300, lr=3e-3, seed=1)
    after = x0_error()
    assert after < before / 5, (before, after)


def test_selectable_by_config():
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 8, "n_layers": 1},
                                      "diffusion": {"parameterization": "x0", "loss_weighting": "snr_clamp",
                                                    "snr_clamp": [0, 5]}})
    proc = build_model(cfg, 5)
    assert proc.parameterization.name == "x0"
    assert (proc.weighting.name, proc.weighting.lo, proc.weighting.hi) == ("snr_clamp", 0.0, 5.0)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    default = build_model(ExperimentConfig.from_dict({"model": {"hidden_nf": 8, "n_layers": 1}}), 5)
    assert default.parameterization.name == "eps" and default.weighting.on_eps
    with pytest.raises(ValueError, match="parameterization"):
        ExperimentConfig.from_dict({"diffusion": {"parameterization": "v"}})
    with pytest.raises(ValueError, match="snr_clamp"):
        ExperimentConfig.from_dict({"diffusion": {"snr_clamp": [2, 1]}})


def test_the_process_implements_the_contract(make_process):
    from moldiff.diffusion.base import DiffusionProcess

    assert isinstance(make_process(), DiffusionProcess)
    assert not isinstance(torch.nn.Linear(2, 2), DiffusionProcess)
