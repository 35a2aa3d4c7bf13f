"""Tests for moldiff/diffusion/process.py: the *process* is E(3)-invariant/equivariant, not just the net."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.diffusion.process import EquivariantDiffusion, LossOutput
from moldiff.diffusion.schedules import SCHEDULES, NoiseSchedule
from moldiff.geometry import assert_zero_com, sample_zero_com_gaussian

TOL = 1e-9
K = 5  # atom classes (QM9 vocabulary), see tests/conftest.py


def randomize_(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Re-draw the denoiser's weights so the coordinate head is not ~0 (EDM init) and errors would show."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def com(pos: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    return torch.zeros(num_graphs, 3, dtype=pos.dtype).index_add_(0, batch, pos)


@pytest.fixture
def setup64(float64, make_batch, make_process):
    def build(schedule="polynomial_2", loss_type="l2", context_nf=0):
        proc = make_process(
            schedule=schedule, loss_type=loss_type, n_layers=2, context_nf=context_nf, dtype=torch.float64
        )
        randomize_(proc.denoiser)
        mol = make_batch((4, 3, 5), context_nf=context_nf, dtype=torch.float64, seed=1)
        return proc, mol

    return build


# ---------------------------------------------------------------------------- training loss is E(3)-invariant
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("loss_type", ["l2", "vlb"])
def test_loss_e3_invariant_with_rotated_noise(loss_type, training, setup64):
    proc, mol = setup64(loss_type=loss_type)
    proc.train(training)
    t_int = torch.tensor([0, 1, 617])  # t = 0 exercises the discretised L_0 term
    gen = torch.Generator().manual_seed(5)
    eps_pos = sample_zero_com_gaussian(mol.batch, mol.num_graphs, gen, torch.float64)
    eps_h = torch.randn(mol.pos.shape[0], proc.feature_dim, generator=gen, dtype=torch.float64)

    def loss(pos, eps_pos):
        return proc.loss(replace(mol, pos=pos), t_int=t_int, noise=(eps_pos, eps_h)).loss

    scale = loss(mol.pos, eps_pos).detach().abs()  # VLB terms reach 1e6: compare relative errors

    # positions are points (the loss centres them), the noise is a translation-invariant vector
    assert_equivariant(
        lambda pos, eps_pos: loss(pos, eps_pos) / scale,
        args_in=[mol.pos, eps_pos],
        irreps_in=["cartesian_points", "1o"],
        irreps_out=[None],
        tolerance=TOL,
    )


def test_loss_not_invariant_if_noise_is_not_rotated(setup64):
    """Teeth: keeping the noise fixed while rotating the molecule changes the loss."""
    proc, mol = setup64()
    t_int = torch.tensor([300, 400, 500])
    eps = proc.sample_noise(mol.batch, mol.num_graphs, torch.float64, torch.Generator().manual_seed(0))

    def loss(pos, eps_pos):
        return proc.loss(replace(mol, pos=pos), t_int=t_int, noise=(eps_pos, eps[1])).loss

    with pytest.raises(AssertionError, match="equivariance error"):
        assert_equivariant(
            loss,
            args_in=[mol.pos, eps[0]],
            irreps_in=["cartesian_points", None],
            irreps_out=[None],
            tolerance=TOL,
        )


def test_loss_output_fields_and_reproducibility(setup64):
    proc, mol = setup64()
    out = proc.loss(mol, generator=torch.Generator().manual_seed(3))
    assert isinstance(out, LossOutput)
    for v in (out.loss, out.error_t, out.kl_prior, out.t_int):
        assert v.shape == (mol.num_graphs,)
    assert torch.isfinite(out.loss).all() and ((0 <= out.t_int) & (out.t_int <= proc.timesteps)).all()
    again = proc.loss(mol, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.loss, again.loss) and torch.equal(out.t_int, again.t_int)


def test_loss_is_differentiable(make_batch, make_process):
    proc, mol = make_process(), make_batch()
    proc.loss(mol).loss.mean().backward()
    grads = [p.grad for p in proc.denoiser.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------ reverse step is E(3)-equivariant
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_reverse_step_equivariant_with_fixed_noise(schedule, setup64):
    proc, mol = setup64(schedule=schedule)
    B, batch = mol.num_graphs, mol.batch
    gen = torch.Generator().manual_seed(2)
    z_pos = sample_zero_com_gaussian(batch, B, gen, torch.float64)
    z_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen, dtype=torch.float64)
    noise_pos, noise_h = proc.sample_noise(batch, B, torch.float64, gen)
    t, s = torch.tensor([0.9, 0.5, 0.02]), torch.tensor([0.8, 0.49, 0.0])

    def step(z_pos, noise_pos, z_h, noise_h):
        return proc.p_zs_given_zt(z_pos, z_h, t, s, batch, B, noise=(noise_pos, noise_h))

    # z_t as "cartesian_points": a translated z_t gives the same (re-centred) z_s, so output is "1o".
    assert_equivariant(
        step,
        args_in=[z_pos, noise_pos, z_h, noise_h],
        irreps_in=["cartesian_points", "1o", None, None],
        irreps_out=["1o", None],
        tolerance=TOL,
    )


def test_reverse_step_equivariant_with_context(setup64):
    proc, mol = setup64(context_nf=2)
    B, batch = mol.num_graphs, mol.batch
    z_pos = sample_zero_com_gaussian(batch, B, dtype=torch.float64)
    noise = proc.sample_noise(batch, B, torch.float64)
    z_h = torch.randn(batch.shape[0], proc.feature_dim)
    t, s = torch.full((B,), 0.5), torch.full((B,), 0.4)
    assert_equivariant(
        lambda zp, npos: proc.p_zs_given_zt(zp, z_h, t, s, batch, B, mol.context, noise=(npos, noise[1])),
        args_in=[z_pos, noise[0]],
        irreps_in=["cartesian_points", "1o"],
        irreps_out=["1o", None],
        tolerance=TOL,
    )


def test_reverse_step_matches_posterior_mean_with_oracle_eps(float64, make_process):
    """With the true noise as eps_hat and zero sampling noise, the step returns the mean of q(z_s | z_t, x):
    ``alpha_t|s sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_t|s^2 / sigma_t^2 x`` (VDM eq. 31)."""
    proc = make_process(dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1])
    x_pos = sample_zero_com_gaussian(batch, 2, dtype=torch.float64)
    x_h = torch.randn(5, proc.feature_dim)
    eps_pos = sample_zero_com_gaussian(batch, 2, dtype=torch.float64)
    eps_h = torch.randn(5, proc.feature_dim)
    t, s = torch.tensor([0.7, 0.3]), torch.tensor([0.6, 0.1])
    gamma_t, gamma_s = proc.schedule.gamma(t).double(), proc.schedule.gamma(s).double()
    z_pos, z_h = proc.q_sample(x_pos, x_h, gamma_t, batch, eps_pos, eps_h)
    zero = (torch.zeros_like(x_pos), torch.zeros_like(x_h))
    out_pos, out_h = proc.p_zs_given_zt(z_pos, z_h, t, s, batch, 2, noise=zero, eps=(eps_pos, eps_h))
    a_t, a_s = NoiseSchedule.alpha_from_gamma(gamma_t), NoiseSchedule.alpha_from_gamma(gamma_s)
    s2_t, s2_s = NoiseSchedule.sigma_from_gamma(gamma_t) ** 2, NoiseSchedule.sigma_from_gamma(gamma_s) ** 2
    a_ts = a_t / a_s
    s2_ts = s2_t - a_ts**2 * s2_s
    c_z = (a_ts * s2_s / s2_t)[batch, None]
    c_x = (a_s * s2_ts / s2_t)[batch, None]
    torch.testing.assert_close(out_pos, c_z * z_pos + c_x * x_pos, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out_h, c_z * z_h + c_x * x_h, rtol=1e-8, atol=1e-10)


def test_reverse_step_noise_scale(float64, make_process):
    """With eps_hat = 0 the step is ``z_t / alpha_t|s + sigma_t|s sigma_s / sigma_t * noise`` (re-centred)."""
    proc = make_process(dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 0])
    z_pos = sample_zero_com_gaussian(batch, 1, dtype=torch.float64)
    z_h = torch.randn(4, proc.feature_dim)
    n_pos = sample_zero_com_gaussian(batch, 1, dtype=torch.float64)
    n_h = torch.randn(4, proc.feature_dim)
    t, s = torch.tensor([0.5]), torch.tensor([0.25])
    g_t, g_s = proc.schedule.gamma(t), proc.schedule.gamma(s)
    _, sigma_ts, alpha_ts = NoiseSchedule.sigma_and_alpha_t_given_s(g_t, g_s)
    std = sigma_ts * NoiseSchedule.sigma_from_gamma(g_s) / NoiseSchedule.sigma_from_gamma(g_t)
    zeros = (torch.zeros_like(z_pos), torch.zeros_like(z_h))
    out_pos, out_h = proc.p_zs_given_zt(z_pos, z_h, t, s, batch, 1, noise=(n_pos, n_h), eps=zeros)
    torch.testing.assert_close(out_pos, z_pos / alpha_ts + std * n_pos, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_h, z_h / alpha_ts + std * n_h, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- samples stay zero-CoM
def test_chain_and_final_sample_have_zero_com(make_batch, make_process):
    proc = make_process(timesteps=50)
    B, batch = 3, make_batch((3, 4, 5)).batch
    gen = torch.Generator().manual_seed(0)
    z_pos, z_h = proc.sample_noise(batch, B, torch.float32, gen)
    z_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen)
    for t_val in range(50, 0, -10):
        t = torch.full((B,), t_val / 50)
        s = torch.full((B,), (t_val - 10) / 50)
        z_pos, z_h = proc.p_zs_given_zt(z_pos, z_h, t, s, batch, B, generator=gen)
        assert_zero_com(z_pos, batch, tol=1e-5)
    pos, types, charges = proc.sample_p_xh_given_z0(z_pos, z_h, batch, B, generator=gen)
    assert_zero_com(pos, batch, tol=1e-5)
    assert pos.shape == (12, 3) and types.shape == charges.shape == (12,)
    assert types.dtype == charges.dtype == torch.long
    assert ((0 <= types) & (types < K)).all()


def test_sample_p_xh_given_z0_decodes_types_and_charges(float64, make_process):
    proc = make_process(dtype=torch.float64)
    batch = torch.tensor([0, 0, 1])
    one_hot = torch.eye(K)[[1, 3, 4]]
    z_h = torch.cat([one_hot / 4, torch.tensor([[0.6], [0.8], [0.9]])], 1)
    z_pos = sample_zero_com_gaussian(batch, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    pos, types, charges = proc.sample_p_xh_given_z0(z_pos, z_h, batch, 2, generator=g)
    assert types.tolist() == [1, 3, 4]
    assert charges.tolist() == [6, 8, 9]
    pos2, _, _ = proc.sample_p_xh_given_z0(z_pos, z_h, batch, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pos, pos2)


# ---------------------------------------------------------------------------- likelihood
def test_nll_finite_and_reproducible(make_batch, make_process):
    proc, mol = make_process().eval(), make_batch()
    nll = proc.nll(mol, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (mol.num_graphs,) and torch.isfinite(nll).all()
    assert torch.equal(nll, proc.nll(mol, generator=torch.Generator().manual_seed(0)))


def test_nll_finite_float64_with_context(setup64):
    proc, mol = setup64(context_nf=2)
    assert torch.isfinite(proc.eval().nll(mol)).all()


def test_kl_prior_is_small_and_non_negative(setup64):
    proc, mol = setup64()
    pos, h = proc.normalize(mol)
    kl = proc.kl_prior(pos, h, mol.batch, mol.num_graphs)
    assert kl.shape == (3,) and (kl >= 0).all() and (kl < 1e-3).all()


# ---------------------------------------------------------------------------- normalisation, q_sample, errors
def test_normalize(make_batch, make_process):
    proc, mol = make_process(), make_batch()
    pos, h = proc.normalize(mol)
    assert_zero_com(pos, mol.batch, tol=1e-6)
    torch.testing.assert_close(h, torch.cat([mol.one_hot / 4, mol.charges / 10], 1))
    no_charge = EquivariantDiffusion(
        proc.denoiser, proc.schedule, K, include_charges=False, norm_values=(1.0, 8.0, 1.0)
    )
    assert no_charge.normalize(mol)[1].shape == (12, K) and no_charge.feature_dim == K


def test_q_sample_formula(float64, make_process):
    proc = make_process(dtype=torch.float64)
    batch = torch.tensor([0, 1])
    x_pos, x_h, e_pos, e_h = torch.randn(2, 3), torch.randn(2, 6), torch.randn(2, 3), torch.randn(2, 6)
    gamma = torch.tensor([-2.0, 3.0])
    z_pos, z_h = proc.q_sample(x_pos, x_h, gamma, batch, e_pos, e_h)
    a, s = torch.sigmoid(-gamma).sqrt()[:, None], torch.sigmoid(gamma).sqrt()[:, None]
    torch.testing.assert_close(z_pos, a * x_pos + s * e_pos)
    torch.testing.assert_close(z_h, a * x_h + s * e_h)


def test_invalid_loss_type_and_norm_values(make_denoiser):
    with pytest.raises(ValueError, match="loss_type"):
        EquivariantDiffusion(make_denoiser(), NoiseSchedule(), K, loss_type="l1")
    with pytest.raises(ValueError, match="norm value"):  # 8 sigma_0 = 0.025 > 1 / 100
        EquivariantDiffusion(make_denoiser(), NoiseSchedule(), K, norm_values=(1.0, 100.0, 10.0))


# ---------------------------------------------------------------------------- learning signal
def test_loss_falls_when_overfitting_tiny_batch(make_batch, make_process, fit_batch):
    """~100 Adam steps on one fixed batch must lower the loss measured at fixed (t, noise) draws."""
    proc = make_process(hidden_nf=32, n_layers=2, timesteps=100)
    mol = make_batch((3, 4, 5), center=True)
    gen = torch.Generator().manual_seed(0)
    probes = [
        (torch.randint(1, 101, (3,), generator=gen), proc.sample_noise(mol.batch, 3, torch.float32, gen))
        for _ in range(16)
    ]

    def probe_loss() -> float:
        with torch.no_grad():
            return float(
                torch.stack([proc.loss(mol, t_int=t, noise=n).loss.mean() for t, n in probes]).mean()
            )

    proc.train()
    before = probe_loss()
    fit_batch(proc, mol, steps=100, lr=2e-3, seed=1)
    after = probe_loss()
    assert after < 0.7 * before, (before, after)
