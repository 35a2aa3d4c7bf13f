"""Noise injection ("churn") before a reverse step: raise the noise level of the state, then step from there.

Karras et al. (2022, "Elucidating the design space of diffusion-based generative models", Algorithm 2;
NVlabs/edm ``generate.py``: ``edm_sampler`` / ``ablation_sampler``) add, before the step from noise
level ``sigma_i`` to ``sigma_{i+1}``, fresh noise that lifts the state to ``sigma_hat = (1 + g) sigma_i``
with ``g = min(S_churn / N, sqrt(2) - 1)`` inside a window ``S_tmin <= sigma_i <= S_tmax`` (``g = 0``
outside; the cap keeps the added variance at most the variance already present), and then take the
solver's step from ``sigma_hat``. Their ``sigma`` is the variance-exploding noise level; with a
signal scaling ``s(t)`` (their VP ablation) the lift is ``x_hat = s(t_hat) / s(t) x + s(t_hat)
sqrt(sigma_hat^2 - sigma^2) S_noise eps``. VEDA (Zhang, Bi and Song, AAAI 2026; peiningzhang/VEDA
``models/fm.py::_generate``) does the same in its VE process with ``g = 0.4``
(``--coord_noise_std_dev 0.4`` in its README commands) for ``0.03 <= sigma <= 3`` (Å), re-noises its
discrete channels (atom types, bonds) by the forward (masking) transition from ``sigma`` to
``sigma_hat``, and then moves by the original step length, so the step ends on the next grid point.

Here, in EDM's variance-preserving process (``alpha_t^2 = sigmoid(-gamma_t)``, ``sigma_t^2 =
sigmoid(gamma_t)``), the VE noise level is ``sigma_t / alpha_t = exp(gamma_t / 2)``, so Karras' lift
is ``gamma_hat = gamma_t + 2 log(1 + churn)`` and the state moves by

``z' = (alpha_hat / alpha_t) z + sqrt(sigma_hat^2 - (alpha_hat / alpha_t)^2 sigma_t^2) eps
     = (alpha_hat / alpha_t) z + alpha_hat sqrt(e^{gamma_hat} - e^{gamma_t}) eps``

(:func:`raise_noise`; ``eps`` zero centre-of-mass for positions). If ``z ~ q(z_t | x)`` then
``z' ~ q(z_hat | x)`` exactly. The network only knows the ``T + 1`` integer timesteps, so
``t_hat`` is the integer step whose ``gamma`` is nearest to the target, kept in ``[t, T]``
(:func:`raised_grid`; Karras round ``sigma_hat`` to the network's levels the same way); the lift
uses the exact ``gamma(t_hat)``. A step whose ``t_hat`` rounds back to ``t`` (or starts at ``T``)
draws nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moldiff.diffusion.schedules import NoiseSchedule

__all__ = ["MAX_CHURN", "Churn", "raise_noise", "raised_grid"]

State = tuple[torch.Tensor, ...]

#: Karras' cap ``sqrt(2) - 1``: the lift at most doubles the noise variance (``sigma_hat^2 <= 2 sigma^2``).
MAX_CHURN: float = math.sqrt(2.0) - 1.0


def raise_noise(z: State, gamma: torch.Tensor | float, gamma_hat: torch.Tensor | float, noise: State) -> State:
    """Lift a state from ``gamma`` to ``gamma_hat >= gamma``: ``z' = (alpha_hat/alpha) z + std noise``.

    ``std = alpha_hat sqrt(e^{gamma_hat} - e^{gamma}) = sqrt(sigma_hat^2 - (alpha_hat/alpha)^2 sigma^2)``,
    computed in float64.

    Args:
        z: the state at ``gamma`` (any tuple of tensors, e.g. ``(pos [N, 3], h [N, F])``).
        gamma: ``gamma`` of the current level.
        gamma_hat: ``gamma`` of the raised level (``>= gamma``).
        noise: standard noise shaped like ``z`` (zero centre-of-mass for positions).

    Returns:
        The lifted state.

    >>> z = raise_noise((torch.tensor([1.0]),), 0.0, 0.0, (torch.tensor([5.0]),))  # no lift: unchanged
    >>> z[0].tolist()
    [1.0]
    """
    g = torch.as_tensor(gamma, dtype=torch.float64)
    g_hat = torch.as_tensor(gamma_hat, dtype=torch.float64)
    if bool(g_hat < g):
        raise ValueError(f"gamma_hat must be >= gamma (a lift adds noise), got {float(g_hat)} < {float(g)}")
    a, a_hat = NoiseSchedule.alpha_from_gamma(g), NoiseSchedule.alpha_from_gamma(g_hat)
    scale = float(a_hat / a)
    std = float(a_hat * torch.sqrt(torch.exp(g) * torch.expm1(g_hat - g)))
    return tuple(scale * zi + std * ni for zi, ni in zip(z, noise, strict=True))


def raised_grid(grid: torch.Tensor, gamma_table: torch.Tensor, churn: float,
                window: tuple[float, float] | None = None) -> torch.Tensor:
    """Integer timestep ``t_hat_k >= t_k`` each step of ``grid`` starts from after the lift.

    ``t_hat_k`` is the integer step whose ``gamma`` is nearest to ``gamma(t_k) + 2 log(1 + churn)``,
    kept in ``[t_k, T]``; steps whose normalised time ``t_k / T`` lies outside ``window`` (``(lo,
    hi)``, inclusive; ``None``: every step) keep ``t_hat_k = t_k``.

    Args:
        grid: ``[S + 1]`` decreasing integer timesteps (``T`` to 0).
        gamma_table: the schedule's ``[T + 1]`` ``gamma`` (increasing with ``t``).
        churn: Karras' ``g`` per step, in ``[0, sqrt(2) - 1]``.
        window: normalised times ``(lo, hi)`` where the lift applies.

    Returns:
        ``[S]`` long: the start timestep of every step.

    >>> g = NoiseSchedule("polynomial_2", 1000).gamma_table
    >>> raised_grid(torch.tensor([1000, 500, 100, 0]), g, 0.0).tolist()
    [1000, 500, 100]
    >>> raised_grid(torch.tensor([1000, 500, 100, 0]), g, 0.4, window=(0.0, 0.3)).tolist()
    [1000, 500, 139]
    """
    if not 0.0 <= churn <= MAX_CHURN + 1e-12:
        raise ValueError(f"churn must be between 0 and sqrt(2) - 1 = {MAX_CHURN:.4f}, got {churn}")
    start = grid[:-1].clone().long()
    if churn == 0.0:
        return start
    table = gamma_table.detach().cpu().to(torch.float64).contiguous()
    T = table.shape[0] - 1
    lift = 2.0 * math.log1p(churn)
    for k, t in enumerate(start.tolist()):
        if window is not None and not window[0] <= t / T <= window[1]:
            continue
        target = float(table[t]) + lift
        i = int(torch.searchsorted(table, torch.tensor([target], dtype=torch.float64))[0])
        if i > T or (i > 0 and target - float(table[i - 1]) < float(table[i]) - target):
            i -= 1  # the nearer of the two neighbouring levels
        start[k] = min(max(i, t), T)
    return start


@dataclass(frozen=True)
class Churn:
    """The lifts of one sampling run, applied by every solver before the network call of a step.

    Attributes:
        gammas: ``[S]`` float64 ``gamma`` each step starts from (``>=`` the grid's; equal: no lift).
        noise_fn: ``noise_fn(k)`` fresh standard noise for the lift of step ``k`` (drawn only when lifted).
        on_raise: called as ``on_raise(k)`` after the lift of step ``k`` (the sampler re-noises the
            discrete channels there), or ``None``.
    """

    gammas: torch.Tensor
    noise_fn: Callable[[int], State]
    on_raise: Callable[[int], None] | None = None

    def apply(self, k: int, z: State, gammas: torch.Tensor, project: Callable[[State], State]) -> State:
        """The state of step ``k`` lifted from the grid's ``gammas[k]`` to ``self.gammas[k]`` (then ``project``)."""
        if not bool(self.gammas[k] > gammas[k]):
            return z
        z = project(raise_noise(z, gammas[k], self.gammas[k], self.noise_fn(k)))
        if self.on_raise is not None:
            self.on_raise(k)
        return z
