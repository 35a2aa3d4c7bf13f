"""Categorical (discrete) diffusion of per-atom or per-edge class labels with a marginal prior.

This is the discrete counterpart of the Gaussian process in :mod:`moldiff.diffusion.process`, in the
style of D3PM (Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces",
NeurIPS 2021) with the *marginal* transitions of DiGress / MiDi (Vignac et al., ICLR 2023 /
ECML 2023), as used by EQGAT-diff (Le et al., ICLR 2024) for atom types and bond orders.

Every row of a ``[N, K]`` tensor is one independent categorical variable (an atom's type, or one
edge's bond order); rows are treated identically, so every operation is permutation-equivariant
over rows, and labels carry no geometry, so they are trivially E(3)-invariant. Notation (row
vectors, ``m`` = the prior ``[K]``, ``1`` = the all-ones vector):

* cumulative transition ``Qbar_t = abar_t I + (1 - abar_t) 1 m^T``, i.e.
  ``q(x_t | x_0) = Cat(x_t; abar_t x_0 + (1 - abar_t) m)``: keep the label with probability
  ``abar_t``, otherwise redraw it from ``m``;
* since ``m^T 1 = 1`` these matrices compose multiplicatively,
  ``Qbar_s Q_{t|s} = Qbar_t`` with ``Q_{t|s} = abar_{t|s} I + (1 - abar_{t|s}) 1 m^T`` and
  ``abar_{t|s} = abar_t / abar_s`` for any ``s <= t`` (a jump of any size, not just one step);
* the stationary distribution is ``m``: ``x_1 ~ m`` when ``abar_1 = 0`` (``~m`` when ``abar_1 ~ 0``).

The network predicts ``p_theta(x_0 | x_t)`` (logits); the reverse step is D3PM's
x0-parameterisation ``p(x_s | x_t) = sum_k p_theta(x_0 = k | x_t) q(x_s | x_t, x_0 = k)``, with the
exact Bayes posterior ``q(x_s | x_t, x_0) = q(x_t | x_s) q(x_s | x_0) / q(x_t | x_0)``.

The keep-probability ``abar_t`` shares the Gaussian channel's clock by default:
``abar_t = alpha_t^2 = sigmoid(-gamma_t)`` of the :class:`~moldiff.diffusion.schedules.NoiseSchedule`
passed in, so that at every ``t`` the discrete channel keeps the same fraction of signal as the
positions. A cosine schedule (``abar_t = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s))``,
exactly 0 at ``t = 1``) or any callable ``t -> abar_t`` can be used instead.

For bond orders the caller should diffuse each undirected edge once (e.g. the upper triangle) and
mirror the result; this module only sees rows.

All probability algebra runs in float64 with clamped denominators and logs; results are returned
in the floating dtype of the input (the default dtype for integer input), on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moldiff.diffusion.schedules import NoiseSchedule

_EPS = 1e-30
_LOSS_WEIGHTINGS = ("none", "snr_clamp")


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine keep-probability ``abar_t = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s))``.

    Nichol & Dhariwal (2021), as used by D3PM / DiGress for discrete diffusion; ``abar_0 = 1`` and
    ``abar_1 = 0`` exactly (clamped to [0, 1] against rounding).

    Args:
        t: normalised time in [0, 1].
        s: offset that keeps the first steps small.

    Returns:
        ``abar_t`` with the shape and dtype of ``t``.

    >>> [round(float(v), 6) for v in cosine_alpha_bar(torch.tensor([0.0, 1.0], dtype=torch.float64))]
    [1.0, 0.0]
    """
    f = torch.cos(0.5 * math.pi * (t + s) / (1.0 + s)) ** 2
    f0 = math.cos(0.5 * math.pi * s / (1.0 + s)) ** 2
    return torch.where(t >= 1.0, torch.zeros_like(f), (f / f0).clamp(0.0, 1.0))  # cos(pi/2) != 0 in floats


class CategoricalDiffusion(nn.Module):
    """Discrete diffusion with marginal transitions for ``[N, K]`` one-hot class labels.

    Args:
        num_classes: number of classes ``K``.
        schedule: a :class:`NoiseSchedule` (``abar_t = alpha_t^2`` of that Gaussian schedule: one
            shared clock), a schedule name (``"cosine"`` for :func:`cosine_alpha_bar`, or any name
            :class:`NoiseSchedule` accepts), or a callable mapping normalised ``t`` to ``abar_t``
            in [0, 1] (non-increasing, ``abar_0 ~ 1``).
        prior: ``[K]`` marginal distribution ``m`` of the limit (normalised here; e.g. the data's
            atom-type frequencies). Default: uniform.
        timesteps: ``T``; the cosine schedule is evaluated on the grid ``round(t T) / T`` like the
            Gaussian tables. ``None``: the schedule's own ``T`` (1000 for cosine / callables).
        loss_weighting: ``"none"``, or ``"snr_clamp"``: weight each row's cross-entropy by
            ``clamp(SNR_t, 0.05, 1.5)`` with ``SNR_t = abar_t / (1 - abar_t)`` (EQGAT-diff).

    >>> cat = CategoricalDiffusion(3, NoiseSchedule("polynomial_2", 100), prior=torch.tensor([0.5, 0.3, 0.2]))
    >>> x0 = F.one_hot(torch.tensor([0, 2]), 3).double()
    >>> cat.q_probs(x0, torch.tensor([1.0, 1.0])).round(decimals=4).tolist()
    [[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]
    """

    def __init__(
        self, num_classes: int, schedule: NoiseSchedule | str | Callable[[torch.Tensor], torch.Tensor],
        prior: torch.Tensor | None = None, timesteps: int | None = None, loss_weighting: str = "none",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if loss_weighting not in _LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {list(_LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        self.num_classes = int(num_classes)
        self.loss_weighting = loss_weighting
        self.schedule_name: str
        if isinstance(schedule, str) and schedule != "cosine":
            schedule = NoiseSchedule(schedule, 1000 if timesteps is None else timesteps)
        if isinstance(schedule, NoiseSchedule):
            if timesteps is not None and timesteps != schedule.timesteps:
                raise ValueError(f"timesteps={timesteps} differs from the schedule's T={schedule.timesteps}")
            self.schedule = schedule
            self.timesteps = schedule.timesteps
            self.schedule_name = schedule.name
            self._fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        elif schedule == "cosine":
            self.timesteps = 1000 if timesteps is None else int(timesteps)
            self.schedule = None
            self.schedule_name = "cosine"
            self._fn = None
        elif callable(schedule):
            self.timesteps = 1000 if timesteps is None else int(timesteps)
            self.schedule = None
            self.schedule_name = getattr(schedule, "__name__", "callable")
            self._fn = schedule
        else:
            raise TypeError(f"schedule must be a NoiseSchedule, a name or a callable, got {type(schedule).__name__}")
        if self.timesteps <= 0:
            raise ValueError(f"timesteps must be > 0, got {self.timesteps}")
        if prior is None:
            prior = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        prior = torch.as_tensor(prior, dtype=torch.float64).detach().clone().cpu()
        if prior.shape != (num_classes,):
            raise ValueError(f"prior must have shape [{num_classes}], got {list(prior.shape)}")
        if not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()) or float(prior.sum()) <= 0:
            raise ValueError(f"prior must be finite, non-negative and not all zero, got {prior.tolist()}")
        self.register_buffer("prior", prior / prior.sum())

    def extra_repr(self) -> str:
        """Classes, schedule and T in the module repr."""
        return f"num_classes={self.num_classes}, schedule={self.schedule_name!r}, timesteps={self.timesteps}"

    # ------------------------------------------------------------------ helpers
    def _prior64(self, device: torch.device) -> torch.Tensor:
        return self.prior.to(device=device, dtype=torch.float64)

    @staticmethod
    def _out_dtype(x: torch.Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else torch.get_default_dtype()

    def _time(self, t: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
        """Normalised time as a float64 ``[n]`` tensor (a scalar is broadcast)."""
        t = torch.as_tensor(t, device=device, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"time must be a scalar or have shape [{n}], got {list(t.shape)}")
        return t

    def _check_rows(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.num_classes:
            raise ValueError(f"{name} must have shape [N, {self.num_classes}], got {list(x.shape)}")

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """Keep-probability ``abar_t`` (float64, shape of ``t``) for normalised ``t`` in [0, 1].

        With a :class:`NoiseSchedule` this is ``alpha_t^2 = sigmoid(-gamma_t)``
        (``= NoiseSchedule.alpha_from_gamma(gamma_t) ** 2``), so both channels share one clock.
        """
        if self.schedule is not None:
            t = torch.as_tensor(t, device=self.schedule.gamma_table.device, dtype=torch.float64)
            return torch.sigmoid(-self.schedule.gamma(t).to(torch.float64))
        t = torch.as_tensor(t, dtype=torch.float64)
        if self._fn is None:  # cosine on the integer grid, like the Gaussian tables
            t = torch.round(t * self.timesteps).clamp(0, self.timesteps) / self.timesteps
            return cosine_alpha_bar(t)
        return torch.as_tensor(self._fn(t), dtype=torch.float64, device=t.device).clamp(0.0, 1.0)

    def _abar_rows(self, t: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
        """``abar`` as a float64 ``[n, 1]`` column on ``device``."""
        return self.alpha_bar(self._time(t, n, device)).to(device).unsqueeze(1)

    @staticmethod
    def sample_categorical(
        probs: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw one class per row of ``probs [N, K]`` (inverse CDF); returns ``[N]`` long.

        One uniform per row is drawn on the generator's device (CPU by default, as in the Gaussian
        process) and moved to ``probs.device``, so a seeded generator gives the same labels on any
        device. ``uniform [N]`` in (0, 1] may be passed instead (then the draw is deterministic).
        Rows need not be normalised; a class of zero probability is never drawn.
        """
        n = probs.shape[0]
        if uniform is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            uniform = 1.0 - torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)  # (0, 1]
        uniform = uniform.to(device=probs.device, dtype=torch.float64).unsqueeze(1)
        p = probs.to(torch.float64).clamp_min(0.0)
        cdf = torch.cumsum(p, dim=1)
        cdf = cdf / cdf[:, -1:].clamp_min(_EPS)
        idx = (cdf < uniform).sum(dim=1)
        return idx.clamp_max(probs.shape[1] - 1)

    def _one_hot(self, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.one_hot(idx, self.num_classes).to(dtype)

    # ------------------------------------------------------------------ forward process
    def q_probs(self, x0_onehot: torch.Tensor, t_atom: torch.Tensor | float) -> torch.Tensor:
        """``q(x_t | x_0) = abar_t x_0 + (1 - abar_t) m`` per row (``[N, K]``, rows sum to 1).

        ``x0_onehot`` may also be a soft distribution over classes (the same formula applies).
        """
        self._check_rows(x0_onehot, "x0_onehot")
        x0 = x0_onehot.to(torch.float64)
        ab = self._abar_rows(t_atom, x0.shape[0], x0.device)
        probs = ab * x0 + (1.0 - ab) * self._prior64(x0.device)
        return probs.to(self._out_dtype(x0_onehot))

    def q_sample(
        self, x0_onehot: torch.Tensor, t_atom: torch.Tensor | float, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample noisy one-hot labels ``x_t ~ q(x_t | x_0)`` (``[N, K]``, dtype of ``x0_onehot``)."""
        probs = self.q_probs(x0_onehot.to(torch.float64), t_atom)
        return self._one_hot(self.sample_categorical(probs, generator), self._out_dtype(x0_onehot))

    def prior_sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``n`` one-hot draws ``[n, K]`` from the prior ``m`` (the limit ``x_1``)."""
        device = torch.device(device) if device is not None else self.prior.device
        probs = self._prior64(device).expand(n, self.num_classes)
        return self._one_hot(self.sample_categorical(probs, generator), dtype or torch.get_default_dtype())

    def transition_probs(
        self, x_s_onehot: torch.Tensor, s_atom: torch.Tensor | float, t_atom: torch.Tensor | float,
    ) -> torch.Tensor:
        """``q(x_t | x_s) = abar_{t|s} x_s + (1 - abar_{t|s}) m`` with ``abar_{t|s} = abar_t / abar_s`` (s <= t)."""
        self._check_rows(x_s_onehot, "x_s_onehot")
        xs = x_s_onehot.to(torch.float64)
        a_ts = self._abar_ratio(s_atom, t_atom, xs.shape[0], xs.device)
        probs = a_ts * xs + (1.0 - a_ts) * self._prior64(xs.device)
        return probs.to(self._out_dtype(x_s_onehot))

    def _abar_ratio(
        self, s_atom: torch.Tensor | float, t_atom: torch.Tensor | float, n: int, device: torch.device,
    ) -> torch.Tensor:
        s = self._time(s_atom, n, device)
        t = self._time(t_atom, n, device)
        if bool((s > t).any()):
            raise ValueError("s_atom must be <= t_atom (the reverse process goes from t to an earlier s)")
        ab_t = self._abar_rows(t, n, device)
        ab_s = self._abar_rows(s, n, device)
        return (ab_t / ab_s.clamp_min(_EPS)).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ reverse process
    def posterior_probs(
        self, x_t_onehot: torch.Tensor, x0_probs: torch.Tensor, t_atom: torch.Tensor | float,
        s_atom: torch.Tensor | float,
    ) -> torch.Tensor:
        """``p(x_s | x_t) = sum_k p(x_0 = k) q(x_s | x_t, x_0 = k)`` for ``s <= t`` (``[N, K]``).

        Exact closed form for a jump of any size. With ``m_i = m[x_t]`` (the prior mass of the
        observed class) and the Bayes posterior
        ``q(x_s = j | x_t, x_0 = k) = q(x_t | x_s = j) q(x_s = j | x_0 = k) / q(x_t | x_0 = k)``:

        * ``q(x_t | x_s = j) = abar_{t|s} [j = x_t] + (1 - abar_{t|s}) m_i`` (``abar_{t|s} = abar_t/abar_s``),
        * ``q(x_t | x_0 = k) = abar_t [k = x_t] + (1 - abar_t) m_i``,
        * ``q(x_s = j | x_0 = k) = abar_s [j = k] + (1 - abar_s) m_j``,

        so with ``w_k = p(x_0 = k) / q(x_t | x_0 = k)`` the sum is
        ``q(x_t | x_s = j) * (abar_s w_j + (1 - abar_s) m_j sum_k w_k)``: O(N K), no ``K x K`` matrices.
        Hypotheses ``k`` that cannot produce ``x_t`` contribute nothing (their numerator is 0; the
        denominator is clamped) and the rows are renormalised (as DiGress does); a row that is
        all-zero (``x_t`` impossible under every predicted ``x_0``) stays at ``x_t``.

        Args:
            x_t_onehot: ``[N, K]`` one-hot current labels.
            x0_probs: ``[N, K]`` predicted distribution of the clean labels (rows sum to 1).
            t_atom: ``[N]`` (or scalar) current normalised time.
            s_atom: ``[N]`` (or scalar) target time, ``s <= t``.
        """
        self._check_rows(x_t_onehot, "x_t_onehot")
        self._check_rows(x0_probs, "x0_probs")
        xt = x_t_onehot.to(torch.float64)
        p = x0_probs.to(device=xt.device, dtype=torch.float64)
        n, device = xt.shape[0], xt.device
        m = self._prior64(device)
        a_ts = self._abar_ratio(s_atom, t_atom, n, device)  # [N, 1]
        ab_t = self._abar_rows(t_atom, n, device)
        ab_s = self._abar_rows(s_atom, n, device)
        m_i = (xt * m).sum(dim=1, keepdim=True)  # prior mass of the observed class
        likelihood = a_ts * xt + (1.0 - a_ts) * m_i  # q(x_t | x_s = j)
        evidence = (ab_t * xt + (1.0 - ab_t) * m_i).clamp_min(_EPS)  # q(x_t | x_0 = k)
        w = p / evidence
        prior_s = ab_s * w + (1.0 - ab_s) * m * w.sum(dim=1, keepdim=True)  # sum_k w_k q(x_s = j | x_0 = k)
        post = likelihood * prior_s
        total = post.sum(dim=1, keepdim=True)
        post = torch.where(total > 0, post / total.clamp_min(_EPS), xt)
        return post.to(self._out_dtype(x_t_onehot))

    def reverse_sample(
        self, x_t_onehot: torch.Tensor, x0_logits: torch.Tensor, t_atom: torch.Tensor | float,
        s_atom: torch.Tensor | float, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step ``x_s ~ p(x_s | x_t)`` from the network's ``x0_logits`` (one-hot ``[N, K]``)."""
        x0_probs = torch.softmax(x0_logits.to(torch.float64), dim=1)
        probs = self.posterior_probs(x_t_onehot.to(torch.float64), x0_probs, t_atom, s_atom)
        return self._one_hot(self.sample_categorical(probs, generator), self._out_dtype(x_t_onehot))

    # ------------------------------------------------------------------ training / decoding
    def loss_weight(self, t_atom: torch.Tensor | float, n: int, device: torch.device | None = None) -> torch.Tensor:
        """Per-row loss weight ``[n]`` (float64): 1, or ``clamp(abar_t / (1 - abar_t), 0.05, 1.5)``."""
        device = device or self.prior.device
        if self.loss_weighting == "none":
            return torch.ones(n, dtype=torch.float64, device=device)
        ab = self._abar_rows(t_atom, n, device).squeeze(1)
        snr = ab / (1.0 - ab).clamp_min(_EPS)
        return snr.clamp(0.05, 1.5)

    def loss(
        self, x0_logits: torch.Tensor, x0_onehot: torch.Tensor, t_atom: torch.Tensor | float,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-row cross-entropy ``-log p_theta(x_0 | x_t)`` of the true class (``[N]``), EQGAT-diff style.

        Multiplied by :meth:`loss_weight` (``loss_weighting``) and by ``weight [N]`` if given.
        Computed with ``log_softmax`` in float64; returned in the dtype of ``x0_logits``.
        ``x0_onehot`` may be soft (then it is the cross-entropy against that distribution).
        """
        self._check_rows(x0_logits, "x0_logits")
        self._check_rows(x0_onehot, "x0_onehot")
        logp = torch.log_softmax(x0_logits.to(torch.float64), dim=1)
        ce = -(x0_onehot.to(device=logp.device, dtype=torch.float64) * logp).sum(dim=1)
        ce = ce * self.loss_weight(t_atom, ce.shape[0], ce.device)
        if weight is not None:
            ce = ce * weight.to(device=ce.device, dtype=torch.float64)
        return ce.to(self._out_dtype(x0_logits))

    def kl_prior(self, x0_onehot: torch.Tensor) -> torch.Tensor:
        """``KL(q(x_1 | x_0) || m)`` per row (``[N]``): the prior term of the variational bound (~0)."""
        q1 = self.q_probs(x0_onehot.to(torch.float64), 1.0)
        m = self._prior64(q1.device)
        kl = (q1 * (q1.clamp_min(_EPS).log() - m.clamp_min(_EPS).log())).sum(dim=1)
        return kl.to(self._out_dtype(x0_onehot))

    @staticmethod
    def decode(x: torch.Tensor) -> torch.Tensor:
        """Final class per row (``[N]`` long): argmax of logits, probabilities or one-hot labels."""
        return torch.argmax(x, dim=-1)
