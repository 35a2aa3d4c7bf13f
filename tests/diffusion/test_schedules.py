"""Tests for moldiff/diffusion/schedules.py: identities, monotonicity, endpoints, transitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moldiff.diffusion.schedules import SCHEDULES, NoiseSchedule, polynomial_alphas2

TIMESTEPS = (10, 1000)


def grid(T: int, dtype=torch.float64) -> torch.Tensor:
    return torch.arange(T + 1, dtype=dtype) / T


def reference_polynomial_alphas2(T: int, power: float, s: float = 1e-5) -> np.ndarray:
    """EDM's polynomial schedule restated from edm_protocol.md §4.2 (independent of the code under test)."""
    x = np.arange(T + 1) / T
    a2 = (1 - x**power) ** 2
    out, prev = [], 1.0
    for v in a2:  # clip consecutive ratios below at 0.001 and re-multiply
        ratio = max(v / prev if prev > 0 else 0.0, 0.001) if prev > 0 else 0.001
        out.append((out[-1] if out else 1.0) * min(ratio, 1.0))
        prev = v
    return (1 - 2 * s) * np.array(out) + s


# ---------------------------------------------------------------------------- identities
@pytest.mark.parametrize("T", TIMESTEPS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha2_plus_sigma2_is_one(name, T):
    sched = NoiseSchedule(name, T)
    t = grid(T)
    torch.testing.assert_close(
        sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones(T + 1), rtol=0, atol=1e-6, check_dtype=False
    )


@pytest.mark.parametrize("T", TIMESTEPS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_gamma_strictly_increasing(name, T):
    sched = NoiseSchedule(name, T)
    gamma = sched.gamma(grid(T))
    assert gamma.shape == (T + 1,)
    assert (gamma.diff() > 0).all()
    assert gamma[0] < 0 < gamma[-1]  # SNR > 1 at t=0, < 1 at t=1
    assert (sched.alpha(grid(T)).diff() <= 0).all()  # float32 alpha saturates at 1 near t = 0
    assert (NoiseSchedule.alpha_from_gamma(gamma.double()).diff() < 0).all()


@pytest.mark.parametrize("name", SCHEDULES)
def test_snr_alpha_sigma_consistent(name):
    sched = NoiseSchedule(name, 100)
    t = grid(100)
    snr = sched.snr(t).double()
    torch.testing.assert_close(snr, (sched.alpha(t) ** 2 / sched.sigma(t) ** 2).double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(snr, torch.exp(-sched.gamma(t).double()), rtol=1e-6, atol=0)
    g = sched.gamma(t)
    torch.testing.assert_close(NoiseSchedule.alpha_from_gamma(g), sched.alpha(t))
    torch.testing.assert_close(NoiseSchedule.sigma_from_gamma(g), sched.sigma(t))


# ---------------------------------------------------------------------------- endpoints
@pytest.mark.parametrize("T", TIMESTEPS)
@pytest.mark.parametrize("power", [2, 3])
def test_polynomial_matches_edm_formula(power, T):
    ref = reference_polynomial_alphas2(T, power)
    np.testing.assert_allclose(polynomial_alphas2(T, power=power), ref, rtol=1e-12, atol=0)
    sched = NoiseSchedule(f"polynomial_{power}", T)
    alpha2 = torch.sigmoid(-sched.gamma(grid(T)).double()).numpy()
    np.testing.assert_allclose(alpha2, ref, rtol=1e-6, atol=0)  # float32 gamma table
    # alpha^2(0) = (1 - 2s) * 1 + s = 1 - s
    assert alpha2[0] == pytest.approx(1 - 1e-5, abs=1e-9)


def test_polynomial_2_edm_protocol_values():
    """edm_protocol.md §3.3/§4.2: gamma(0) = -11.513, gamma(1) = +11.513, sigma_0 = 0.003162,
    alpha_0 = 0.999995, alpha_T = 0.003163 for polynomial_2, T = 1000, s = 1e-5."""
    sched = NoiseSchedule("polynomial_2", 1000)
    zero, one = torch.zeros(1), torch.ones(1)
    assert float(sched.gamma(zero)) == pytest.approx(-11.513, abs=1e-3)
    assert float(sched.gamma(one)) == pytest.approx(11.513, abs=1e-3)
    assert float(sched.sigma(zero)) == pytest.approx(0.003162, abs=1e-6)
    assert float(sched.sigma(zero)) == pytest.approx(math.sqrt(1e-5), rel=1e-5)
    assert float(sched.alpha(zero)) == pytest.approx(0.999995, abs=1e-6)
    assert float(sched.alpha(one)) == pytest.approx(0.003163, abs=1e-6)


@pytest.mark.parametrize("T", TIMESTEPS)
def test_cosine_matches_closed_form(T):
    """Away from the beta clip, EDM's cosine schedule telescopes to ``f((k+1)/(T+1)) / f(0)``."""
    s = 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    sched = NoiseSchedule("cosine", T)
    alpha2 = torch.sigmoid(-sched.gamma(grid(T)).double())
    for k in (0, T // 4, T // 2, 3 * T // 4):
        assert float(alpha2[k]) == pytest.approx(f((k + 1) / (T + 1)) / f(0), rel=1e-5)
    assert 0 < float(alpha2[-1]) < 1e-2


# ---------------------------------------------------------------------------- transitions
@pytest.mark.parametrize("name", SCHEDULES)
def test_sigma_and_alpha_t_given_s(name):
    sched = NoiseSchedule(name, 1000)
    gen = torch.Generator().manual_seed(0)
    t_int = torch.randint(1, 1001, (64,), generator=gen)
    s_int = (t_int - torch.randint(1, 200, (64,), generator=gen)).clamp(min=0)
    gamma_t = sched.gamma(t_int.double() / 1000).double()
    gamma_s = sched.gamma(s_int.double() / 1000).double()
    sigma2_ts, sigma_ts, alpha_ts = NoiseSchedule.sigma_and_alpha_t_given_s(gamma_t, gamma_s)
    alpha_t, alpha_s = NoiseSchedule.alpha_from_gamma(gamma_t), NoiseSchedule.alpha_from_gamma(gamma_s)
    sigma_t, sigma_s = NoiseSchedule.sigma_from_gamma(gamma_t), NoiseSchedule.sigma_from_gamma(gamma_s)
    torch.testing.assert_close(alpha_ts, alpha_t / alpha_s, rtol=1e-10, atol=0)
    torch.testing.assert_close(sigma2_ts, 1 - alpha_ts**2, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(sigma_ts, torch.sqrt(sigma2_ts), rtol=0, atol=0)
    # Markov composition: q(z_t | x) = q(z_t | z_s) o q(z_s | x)
    torch.testing.assert_close(sigma_t**2, alpha_ts**2 * sigma_s**2 + sigma2_ts, rtol=1e-10, atol=1e-14)
    assert (sigma2_ts > 0).all() and (alpha_ts < 1).all()


def test_transition_same_time_is_identity():
    g = NoiseSchedule("polynomial_2", 100).gamma(torch.linspace(0, 1, 5)).double()
    sigma2, sigma, alpha = NoiseSchedule.sigma_and_alpha_t_given_s(g, g)
    torch.testing.assert_close(alpha, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(sigma2, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------- lookup, errors, devices
def test_gamma_rounds_to_nearest_step_and_clamps():
    sched = NoiseSchedule("polynomial_2", 10)
    table = sched.gamma_table
    t = torch.tensor([0.0, 0.04, 0.06, 0.5, 1.0, -0.3, 1.7])
    expected = table[torch.tensor([0, 0, 1, 5, 10, 0, 10])]
    assert torch.equal(sched.gamma(t), expected)


@pytest.mark.parametrize("name", ["linear", "polynomial_", "polynomial_x", "Cosine", ""])
def test_unknown_schedule_raises(name):
    with pytest.raises(ValueError, match="unknown noise schedule") as exc:
        NoiseSchedule(name, 10)
    for allowed in SCHEDULES:
        assert allowed in str(exc.value)


@pytest.mark.parametrize("T", [0, -5])
def test_bad_timesteps_raise(T):
    with pytest.raises(ValueError, match="timesteps"):
        NoiseSchedule("polynomial_2", T)


@pytest.mark.parametrize("name", SCHEDULES)
def test_dtype_and_device(name, dtype, device):
    sched = NoiseSchedule(name, 100).to(device=device, dtype=dtype)
    t = torch.rand(7, dtype=dtype, device=device)
    for out in (sched.gamma(t), sched.alpha(t), sched.sigma(t), sched.snr(t)):
        assert out.shape == (7,) and out.dtype == dtype and out.device.type == device.type
    assert "gamma_table" not in sched.state_dict()  # rebuilt from (name, T), not checkpointed


def test_repr():
    assert repr(NoiseSchedule("cosine", 50)) == "NoiseSchedule(name='cosine', timesteps=50)"
