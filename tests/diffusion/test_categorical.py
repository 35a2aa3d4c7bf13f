"""Tests for moldiff/diffusion/categorical.py: marginal-prior categorical diffusion (D3PM / DiGress / EQGAT-diff)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moldiff.diffusion.categorical import CategoricalDiffusion, cosine_alpha_bar
from moldiff.diffusion.schedules import NoiseSchedule

K = 4
PRIOR = torch.tensor([0.5, 0.25, 0.15, 0.10], dtype=torch.float64)
D = torch.float64


def make_cat(schedule: str = "polynomial_2", prior: torch.Tensor | None = PRIOR, timesteps: int = 1000, **kw):
    sched = "cosine" if schedule == "cosine" else NoiseSchedule(schedule, timesteps)
    return CategoricalDiffusion(K if prior is None else len(prior), sched, prior=prior, timesteps=timesteps, **kw)


def one_hot(idx, k: int = K) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(idx), k).to(D)


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a class of zero probability was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# ============================================================================ schedule
def test_alpha_bar_shares_the_gaussian_clock():
    sched = NoiseSchedule("polynomial_2", 1000)
    cat = CategoricalDiffusion(K, sched)
    t = torch.linspace(0, 1, 101)
    expected = NoiseSchedule.alpha_from_gamma(sched.gamma(t).double()) ** 2
    torch.testing.assert_close(cat.alpha_bar(t), expected, rtol=1e-12, atol=1e-12)
    assert cat.timesteps == 1000 and cat.schedule is sched


def test_cosine_alpha_bar_endpoints_and_monotone():
    cat = make_cat("cosine", timesteps=50)
    ab = cat.alpha_bar(torch.linspace(0, 1, 51, dtype=D))
    assert float(ab[0]) == 1.0 and float(ab[-1]) == 0.0
    assert bool((ab[1:] <= ab[:-1]).all())
    torch.testing.assert_close(ab, cosine_alpha_bar(torch.linspace(0, 1, 51, dtype=D)))


def test_callable_schedule_and_names():
    cat = CategoricalDiffusion(K, lambda t: 1.0 - t, timesteps=10)
    torch.testing.assert_close(cat.alpha_bar(torch.tensor([0.25])), torch.tensor([0.75], dtype=D))
    assert CategoricalDiffusion(K, "polynomial_3", timesteps=20).timesteps == 20


def test_bad_arguments():
    sched = NoiseSchedule("polynomial_2", 10)
    with pytest.raises(ValueError, match="prior"):
        CategoricalDiffusion(3, sched, prior=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="prior"):
        CategoricalDiffusion(2, sched, prior=torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="timesteps"):
        CategoricalDiffusion(2, sched, timesteps=20)
    with pytest.raises(ValueError, match="loss_weighting"):
        CategoricalDiffusion(2, sched, loss_weighting="bogus")
    with pytest.raises(TypeError):
        CategoricalDiffusion(2, 3.0)
    cat = CategoricalDiffusion(2, sched)
    with pytest.raises(ValueError, match="shape"):
        cat.q_probs(one_hot([0, 1], 3), 0.5)
    with pytest.raises(ValueError, match="s_atom"):
        cat.posterior_probs(one_hot([0], 2), one_hot([0], 2), 0.2, 0.5)


def test_prior_is_normalised_and_defaults_to_uniform():
    cat = CategoricalDiffusion(3, "cosine", prior=torch.tensor([2.0, 1.0, 1.0]))
    torch.testing.assert_close(cat.prior, torch.tensor([0.5, 0.25, 0.25], dtype=D))
    torch.testing.assert_close(CategoricalDiffusion(4, "cosine").prior, torch.full((4,), 0.25, dtype=D))
    assert "prior" in cat.state_dict()


# ============================================================================ forward process
@pytest.mark.parametrize("schedule", ["polynomial_2", "cosine"])
def test_q_probs_endpoints(schedule):
    cat = make_cat(schedule)
    x0 = one_hot([0, 1, 2, 3, 3])
    tol = 0.0 if schedule == "cosine" else 2e-5  # polynomial: abar_0 = 1 - 1e-5, abar_1 = 1e-5
    at0 = cat.q_probs(x0, torch.zeros(5))
    at1 = cat.q_probs(x0, torch.ones(5))
    torch.testing.assert_close(at0, x0, atol=tol, rtol=0)
    torch.testing.assert_close(at1, PRIOR.expand(5, K), atol=tol, rtol=0)
    mid = cat.q_probs(x0, torch.full((5,), 0.4))
    torch.testing.assert_close(mid.sum(1), torch.ones(5, dtype=D))
    ab = cat.alpha_bar(0.4)
    torch.testing.assert_close(mid, ab * x0 + (1 - ab) * PRIOR)


def test_q_sample_exact_at_t0_and_prior_at_t1():
    cat = make_cat("cosine")
    x0 = one_hot(torch.randint(0, K, (500,)))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(cat.q_sample(x0, torch.zeros(500), generator=gen), x0)
    x1 = cat.q_sample(x0, torch.ones(500), generator=gen)
    assert chi2(x1.sum(0), PRIOR) < 25.0  # df = 3; p ~ 3e-5


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_q_sample_frequencies_match_q_probs(t):
    cat = make_cat("polynomial_2")
    n = 20000
    gen = torch.Generator().manual_seed(1)
    for k in range(K):
        x0 = one_hot([k] * n)
        xt = cat.q_sample(x0, torch.full((n,), t), generator=gen)
        assert xt.dtype == D and bool((xt.sum(1) == 1).all())
        assert chi2(xt.sum(0), cat.q_probs(x0[:1], t)[0]) < 25.0


def test_q_sample_and_prior_sample_are_reproducible():
    cat = make_cat("polynomial_2")
    x0 = one_hot(torch.randint(0, K, (100,)))
    a = cat.q_sample(x0, 0.5, generator=torch.Generator().manual_seed(3))
    b = cat.q_sample(x0, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    p1 = cat.prior_sample(50, generator=torch.Generator().manual_seed(4))
    p2 = cat.prior_sample(50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(p1, p2) and p1.shape == (50, K)


def test_prior_sample_frequencies_and_zero_mass_classes():
    prior = torch.tensor([0.6, 0.0, 0.4], dtype=D)
    cat = make_cat("polynomial_2", prior=prior)
    x = cat.prior_sample(20000, generator=torch.Generator().manual_seed(5))
    assert chi2(x.sum(0), prior) < 20.0  # also asserts class 1 never drawn


def test_dtypes_follow_the_input():
    cat = make_cat("polynomial_2")
    x0 = one_hot([0, 1, 2]).float()
    assert cat.q_probs(x0, 0.3).dtype == torch.float32
    assert cat.q_sample(x0, 0.3).dtype == torch.float32
    assert cat.posterior_probs(x0, x0, 0.3, 0.1).dtype == torch.float32
    assert cat.loss(torch.zeros(3, K), x0, 0.3).dtype == torch.float32


def test_transitions_compose():
    """q(x_t | x_0) = sum_j q(x_s = j | x_0) q(x_t | x_s = j) for any s <= t."""
    cat = make_cat("polynomial_2")
    eye = torch.eye(K, dtype=D)
    for s, t in [(0.0, 1.0), (0.1, 0.7), (0.5, 0.5), (0.3, 0.31)]:
        qs = cat.q_probs(eye, s)  # [x0, x_s]
        qts = cat.transition_probs(eye, s, t)  # [x_s, x_t]
        torch.testing.assert_close(qs @ qts, cat.q_probs(eye, t), rtol=1e-12, atol=1e-12)


# ============================================================================ posterior
def cumulative_matrix(cat: CategoricalDiffusion, t: float) -> torch.Tensor:
    """Qbar_t[k, j] = q(x_t = j | x_0 = k), built independently of the module's closed forms."""
    ab = float(cat.alpha_bar(t))
    return ab * torch.eye(K, dtype=D) + (1 - ab) * torch.ones(K, 1, dtype=D) * PRIOR[None, :]


@pytest.mark.parametrize("schedule", ["polynomial_2", "cosine"])
@pytest.mark.parametrize("s,t", [(0.0, 0.001), (0.0, 1.0), (0.1, 0.9), (0.5, 0.51), (0.7, 0.7), (0.25, 0.6)])
def test_posterior_matches_brute_force_bayes(schedule, s, t):
    cat = make_cat(schedule)
    qbar_s, qbar_t = cumulative_matrix(cat, s), cumulative_matrix(cat, t)
    q_ts = torch.linalg.solve(qbar_s, qbar_t)  # one-step-free: Qbar_s Q_{t|s} = Qbar_t
    assert bool((q_ts > -1e-12).all())
    torch.testing.assert_close(q_ts.sum(1), torch.ones(K, dtype=D))
    brute = torch.empty(K, K, K, dtype=D)  # [x0 = k, x_t = i, x_s = j]
    for k in range(K):
        for i in range(K):
            brute[k, i] = qbar_s[k] * q_ts[:, i] / qbar_t[k, i]
    for k in range(K):
        got = cat.posterior_probs(torch.eye(K, dtype=D), one_hot([k] * K), t, s)  # rows: x_t = i
        torch.testing.assert_close(got, brute[k], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got.sum(1), torch.ones(K, dtype=D))
    # soft x0 predictions: the mixture sum_k p_k q(x_s | x_t, x0 = k)
    p = torch.distributions.Dirichlet(torch.ones(K, dtype=D)).sample((K,))  # one prediction per x_t
    got = cat.posterior_probs(torch.eye(K, dtype=D), p, torch.full((K,), t), torch.full((K,), s))
    expected = torch.einsum("ik,kij->ij", p, brute)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_posterior_with_impossible_hypotheses_stays_normalised():
    """With a zero-mass prior class, x0 hypotheses that cannot produce x_t are dropped, not NaN."""
    prior = torch.tensor([0.7, 0.0, 0.3], dtype=D)
    cat = CategoricalDiffusion(3, "cosine", prior=prior)
    x_t = one_hot([1, 1], 3)
    p = torch.tensor([[0.5, 0.2, 0.3], [1.0, 0.0, 0.0]], dtype=D)
    post = cat.posterior_probs(x_t, p, 0.6, 0.3)
    assert bool(torch.isfinite(post).all())
    torch.testing.assert_close(post.sum(1), torch.ones(2, dtype=D))
    # only x0 = 1 explains x_t = 1: the first row is q(x_s | x_t = 1, x0 = 1); the second row is impossible
    torch.testing.assert_close(post[0], cat.posterior_probs(x_t[:1], one_hot([1], 3), 0.6, 0.3)[0])
    torch.testing.assert_close(post[1], x_t[1])


def test_posterior_with_s_equal_t_is_identity():
    cat = make_cat("polynomial_2")
    x_t = one_hot([0, 1, 2, 3])
    p = torch.softmax(torch.randn(4, K, dtype=D), 1)
    torch.testing.assert_close(cat.posterior_probs(x_t, p, 0.4, 0.4), x_t)


# ============================================================================ reverse chain consistency
def bayes_x0_given_xt(cat: CategoricalDiffusion, data: torch.Tensor, t: float) -> torch.Tensor:
    """Optimal denoiser for i.i.d. labels x0 ~ data: p(x0 = k | x_t = i) ∝ data_k q(x_t = i | x0 = k); rows i."""
    joint = data[:, None] * cat.q_probs(torch.eye(len(data), dtype=D), t)  # [k, i]
    return (joint / joint.sum(0, keepdim=True)).T


@pytest.mark.parametrize("schedule,prior,tol", [
    ("cosine", None, 1e-12),
    ("cosine", "data", 1e-12),
    ("polynomial_2", None, 5e-5),
])
def test_exact_reverse_chain_reproduces_forward_marginals(schedule, prior, tol):
    data = torch.tensor([0.6, 0.3, 0.1], dtype=D)
    prior_t = data if prior == "data" else None
    sched = "cosine" if schedule == "cosine" else NoiseSchedule(schedule, 1000)
    cat = CategoricalDiffusion(3, sched, prior=prior_t)
    eye = torch.eye(3, dtype=D)
    times = [1.0, 0.9, 0.75, 0.5, 0.3, 0.2, 0.05, 0.01, 0.0]  # uneven multi-step jumps
    dist = cat.prior.clone()
    for t, s in zip(times[:-1], times[1:], strict=True):
        post = cat.posterior_probs(eye, bayes_x0_given_xt(cat, data, t), t, s)  # rows: x_t = i
        dist = dist @ post
        forward = cat.q_probs(data[None, :], s)[0]
        torch.testing.assert_close(dist, forward, atol=tol, rtol=0)
    torch.testing.assert_close(dist, data, atol=tol, rtol=0)


def test_sampled_reverse_chain_matches_data_distribution():
    data = torch.tensor([0.6, 0.3, 0.1], dtype=D)
    cat = CategoricalDiffusion(3, "cosine", timesteps=10)
    gen = torch.Generator().manual_seed(7)
    n = 20000
    x = cat.prior_sample(n, generator=gen, dtype=D)
    times = torch.linspace(1, 0, 11, dtype=D)
    for t, s in zip(times[:-1], times[1:], strict=True):
        probs = bayes_x0_given_xt(cat, data, float(t))[cat.decode(x)]
        x = cat.reverse_sample(x, probs.log(), t, s, generator=gen)
    assert chi2(x.sum(0), data) < 20.0  # df = 2; p ~ 5e-5


def test_constant_marginal_prediction_ends_at_the_data_marginal():
    data = torch.tensor([0.6, 0.3, 0.1], dtype=D)
    cat = CategoricalDiffusion(3, "cosine", timesteps=10)
    eye = torch.eye(3, dtype=D)
    dist = cat.prior.clone()
    times = torch.linspace(1, 0, 11, dtype=D)
    for t, s in zip(times[:-1], times[1:], strict=True):
        dist = dist @ cat.posterior_probs(eye, data.expand(3, 3), t, s)
    torch.testing.assert_close(dist, data, atol=1e-12, rtol=0)


@pytest.mark.parametrize("schedule", ["polynomial_2", "cosine"])
def test_reverse_chain_with_true_x0_ends_at_x0(schedule):
    cat = make_cat(schedule, timesteps=1000)
    n = 500
    labels = torch.randint(0, K, (n,))
    x0 = one_hot(labels)
    logits = 40.0 * x0  # the true x0 as (near-certain) prediction
    gen = torch.Generator().manual_seed(8)
    x = cat.prior_sample(n, generator=gen, dtype=D)
    times = torch.linspace(1, 0, 51, dtype=D)
    for t, s in zip(times[:-1], times[1:], strict=True):
        x = cat.reverse_sample(x, logits, torch.full((n,), float(t)), torch.full((n,), float(s)), generator=gen)
    assert torch.equal(cat.decode(x), labels)


# ============================================================================ loss / decode
def test_loss_is_cross_entropy_and_weighting():
    cat = make_cat("polynomial_2")
    logits = torch.randn(6, K, dtype=D)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    t = torch.linspace(0, 1, 6, dtype=D)
    torch.testing.assert_close(cat.loss(logits, one_hot(labels), t), F.cross_entropy(logits, labels, reduction="none"))
    w = torch.arange(6, dtype=D)
    torch.testing.assert_close(cat.loss(logits, one_hot(labels), t, weight=w),
                               w * F.cross_entropy(logits, labels, reduction="none"))
    snr = make_cat("polynomial_2", loss_weighting="snr_clamp")
    weights = snr.loss_weight(t, 6)
    assert float(weights[0]) == 1.5 and float(weights[-1]) == 0.05
    torch.testing.assert_close(snr.loss(logits, one_hot(labels), t),
                               weights * F.cross_entropy(logits, labels, reduction="none"))
    extreme = torch.tensor([[1e4, -1e4, 0.0, 0.0]], dtype=D)
    assert bool(torch.isfinite(cat.loss(extreme, one_hot([1]), 0.5)).all())


def test_decode_and_kl_prior():
    cat = make_cat("cosine")
    assert cat.decode(torch.tensor([[0.1, 2.0, -1.0, 0.0], [3.0, 0.0, 0.0, 0.0]])).tolist() == [1, 0]
    assert cat.decode(one_hot([3, 2])).dtype == torch.long
    assert float(cat.kl_prior(one_hot([0, 1, 2, 3])).abs().max()) < 1e-12


# ============================================================================ permutation equivariance
def test_permutation_equivariance():
    cat = make_cat("polynomial_2", loss_weighting="snr_clamp")
    n = 12
    x0 = one_hot(torch.randint(0, K, (n,)))
    x_t = one_hot(torch.randint(0, K, (n,)))
    logits = torch.randn(n, K, dtype=D)
    t = torch.rand(n, dtype=D)
    s = t * torch.rand(n, dtype=D)
    u = 1.0 - torch.rand(n, dtype=D)
    perm = torch.randperm(n)
    p = torch.softmax(logits, 1)
    checks = [
        (cat.q_probs(x0, t), cat.q_probs(x0[perm], t[perm])),
        (cat.transition_probs(x0, s, t), cat.transition_probs(x0[perm], s[perm], t[perm])),
        (cat.posterior_probs(x_t, p, t, s), cat.posterior_probs(x_t[perm], p[perm], t[perm], s[perm])),
        (cat.loss(logits, x0, t), cat.loss(logits[perm], x0[perm], t[perm])),
        (cat.decode(logits), cat.decode(logits[perm])),
    ]
    for full, permuted in checks:
        assert torch.equal(full[perm], permuted)
    post = cat.posterior_probs(x_t, p, t, s)
    drawn = cat.sample_categorical(post, uniform=u)
    assert torch.equal(drawn[perm], cat.sample_categorical(post[perm], uniform=u[perm]))


def test_sample_categorical_inverse_cdf():
    probs = torch.tensor([[0.2, 0.0, 0.8], [0.2, 0.0, 0.8], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=D)
    u = torch.tensor([0.2, 0.2000001, 1.0, 1e-9], dtype=D)
    assert CategoricalDiffusion.sample_categorical(probs, uniform=u).tolist() == [0, 2, 0, 2]


# ============================================================================ tiny overfit
PATTERNS = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])  # differ at every position


class PatternNet(nn.Module):
    """(noisy one-hot of a 6-atom molecule, t) -> x0 logits for every atom."""

    def __init__(self, length: int, k: int, hidden: int = 128) -> None:
        super().__init__()
        self.length, self.k = length, k
        self.mlp = nn.Sequential(nn.Linear(length * k + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, length * k))

    def forward(self, x_t: torch.Tensor, t_mol: torch.Tensor) -> torch.Tensor:
        b = t_mol.shape[0]
        inp = torch.cat([x_t.reshape(b, -1), t_mol[:, None]], dim=1)
        return self.mlp(inp).reshape(b * self.length, self.k)


def test_tiny_overfit_regenerates_the_patterns():
    torch.manual_seed(0)
    k, length = 3, PATTERNS.shape[1]
    cat = CategoricalDiffusion(k, NoiseSchedule("polynomial_2", 100), prior=torch.tensor([1.0, 1.0, 1.0]) / 3)
    net = PatternNet(length, k)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(9)
    b = 128

    def noisy_batch(t_mol):
        which = torch.randint(0, 2, (t_mol.shape[0],), generator=gen)
        x0 = F.one_hot(PATTERNS[which].reshape(-1), k).float()
        t_atom = t_mol.repeat_interleave(length)
        return x0, cat.q_sample(x0, t_atom, generator=gen), t_atom

    for _ in range(400):
        t_mol = torch.randint(0, 101, (b,), generator=gen).float() / 100
        x0, x_t, t_atom = noisy_batch(t_mol)
        loss = cat.loss(net(x_t, t_mol), x0, t_atom).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        t_mol = torch.randint(0, 51, (512,), generator=gen).float() / 100  # t <= 0.5: x_t identifies the pattern
        x0, x_t, t_atom = noisy_batch(t_mol)
        ce = float(cat.loss(net(x_t, t_mol), x0, t_atom).mean())
        assert ce < 0.05, ce

        m = 200
        x = cat.prior_sample(m * length, generator=gen, dtype=torch.float32)
        times = torch.linspace(1, 0, 51)
        for t, s in zip(times[:-1], times[1:], strict=True):
            logits = net(x, t.expand(m))
            x = cat.reverse_sample(x, logits, t, s, generator=gen)
    samples = cat.decode(x).reshape(m, length)
    is_a = (samples == PATTERNS[0]).all(1)
    is_b = (samples == PATTERNS[1]).all(1)
    assert float((is_a | is_b).float().mean()) >= 0.98
    assert 0.25 < float(is_a.float().mean()) < 0.75
