"""Self-conditioning: the denoiser reads its previous clean estimate; equivariance, exactness, training, sampling."""

from __future__ import annotations

import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.config import ExperimentConfig
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import remove_mean
from moldiff.models import build_model
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.sampling.sampler import SAMPLERS, Sampler

F = 6  # 5 one-hot types + the charge channel


def randomize_(module, std=0.2):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


@pytest.fixture
def net64(float64):
    torch.manual_seed(0)
    return randomize_(EGNNDenoiser(F, hidden_nf=16, n_layers=2, self_condition=True).double())


def test_equivariant_in_both_position_inputs(net64, make_batch):
    """Rotating/reflecting the noisy positions and the previous estimate together rotates eps_pos."""
    mol = make_batch((4, 3), dtype=torch.float64, seed=2)
    h = torch.randn(7, F, dtype=torch.float64)
    sc_h = torch.randn(7, F, dtype=torch.float64)
    sc_pos = torch.randn(7, 3, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)

    def f(pos, sc):
        return net64(remove_mean(pos, mol.batch, 2), h, t, mol.batch, self_cond=(sc, sc_h))

    assert_equivariant(f, args_in=[mol.pos, sc_pos], irreps_in=["cartesian_points", "cartesian_points"],
                       irreps_out=["1o", f"{F}x0e"], tolerance=1e-9)


def test_permutation_equivariant(net64):
    batch = torch.zeros(5, dtype=torch.long)
    pos = remove_mean(torch.randn(5, 3, dtype=torch.float64), batch, 1)
    h, sc = torch.randn(5, F, dtype=torch.float64), (torch.randn(5, 3, dtype=torch.float64),
                                                      torch.randn(5, F, dtype=torch.float64))
    t = torch.tensor([0.5], dtype=torch.float64)
    perm = torch.tensor([2, 4, 0, 1, 3])
    a = net64(pos, h, t, batch, self_cond=sc)
    b = net64(pos[perm], h[perm], t, batch, self_cond=(sc[0][perm], sc[1][perm]))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u[perm], v, rtol=0, atol=1e-12)


def test_no_estimate_reads_as_zeros(net64):
    batch = torch.tensor([0, 0, 0, 1, 1])
    pos = remove_mean(torch.randn(5, 3, dtype=torch.float64), batch, 2)
    h, t = torch.randn(5, F, dtype=torch.float64), torch.tensor([0.2, 0.6], dtype=torch.float64)
    none = net64(pos, h, t, batch)
    zeros = net64(pos, h, t, batch, self_cond=(torch.zeros(5, 3, dtype=torch.float64),
                                               torch.zeros(5, F, dtype=torch.float64)))
    for u, v in zip(none, zeros, strict=True):
        assert torch.equal(u, v)
    other = net64(pos, h, t, batch, self_cond=(torch.randn(5, 3, dtype=torch.float64),
                                               torch.randn(5, F, dtype=torch.float64)))
    assert not torch.allclose(other[0], none[0])


def make_sc_process(param="x0", timesteps=100):
    torch.manual_seed(1)
    net = EGNNDenoiser(F, hidden_nf=32, n_layers=2, self_condition=True)
    return EquivariantDiffusion(net, NoiseSchedule("polynomial_2", timesteps), 5,
                                parameterization=Parameterization(param),
                                weighting=LossWeighting("snr_clamp", 0.05, 1.5))


def test_training_uses_the_detached_estimate_on_half_of_the_batches(make_batch):
    proc = make_sc_process()
    mol = make_batch((3, 4), center=True)
    pos, h = proc.normalize(mol)
    t = torch.tensor([0.3, 0.6])
    gen = torch.Generator().manual_seed(0)
    draws = [proc._train_self_cond(pos, h, t, mol.batch, None, gen) for _ in range(200)]
    used = [d for d in draws if d is not None]
    assert 70 < len(used) < 130
    assert all(not x.requires_grad for d in used for x in d)
    loss = proc.loss(mol, generator=torch.Generator().manual_seed(3)).loss.mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_selectable_by_config_and_overfits(make_batch, fit_batch):
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 32, "n_layers": 2, "self_condition": True},
                                      "diffusion": {"timesteps": 100, "parameterization": "x0",
                                                    "loss_weighting": "snr_clamp"}})
    proc = build_model(cfg, 5)
    assert proc.self_conditioning
    mol = make_batch((3, 4, 5), center=True)
    probe = [(torch.randint(1, 40, (3,), generator=torch.Generator().manual_seed(i)),
              proc.sample_noise(mol.batch, 3, torch.float32, torch.Generator().manual_seed(100 + i)))
             for i in range(8)]

    def probe_loss():
        with torch.no_grad():
            proc.eval()
            return sum(float(proc.loss(mol, t_int=t, noise=n).loss.mean()) for t, n in probe)

    before = probe_loss()
    fit_batch(proc, mol, steps=300, lr=3e-3, seed=0)
    assert probe_loss() < before / 3


@pytest.mark.parametrize("method", SAMPLERS)
def test_samplers_feed_the_previous_estimate(method):
    proc = make_sc_process()
    seen = []
    forward = proc.denoiser.forward

    def spy(*args, self_cond=None, **kwargs):
        seen.append(self_cond is not None)
        return forward(*args, self_cond=self_cond, **kwargs)

    proc.denoiser.forward = spy
    out = Sampler(proc).sample([3, 4], steps=5, seed=0, method=method)
    assert seen[0] is False and all(seen[1:])  # first call: no estimate yet; every later call: the last one
    again = Sampler(proc).sample([3, 4], steps=5, seed=0, method=method)
    assert torch.equal(out.pos, again.pos) and torch.equal(out.types, again.types)
