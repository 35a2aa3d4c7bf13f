"""Fewer-step solvers for EDM's gamma-parameterised variance-preserving process.

Every solver walks a decreasing grid of integer timesteps ``T = t_0 > ... > t_S = 0`` and returns
the state at ``t_S = 0``; the caller then applies the process's own final step
(:meth:`~moldiff.diffusion.process.EquivariantDiffusion.sample_p_xh_given_z0`: positions from
``x_hat_0``, atom types from ``argmax`` of ``z_0``), exactly as for the ancestral sampler.

Notation (EDM / VDM): ``alpha_t^2 = sigmoid(-gamma_t)``, ``sigma_t^2 = sigmoid(gamma_t)``,
``lambda_t = -gamma_t / 2 = log(alpha_t / sigma_t)``; the data prediction from a noise prediction
is ``x0_hat = (z_t - sigma_t eps_hat) / alpha_t``.

* ``ancestral``: EDM's ``p(z_s | z_t)`` (stochastic; needs many steps): ``z_s = z_t / alpha_t|s
  - sigma_t|s^2 / (alpha_t|s sigma_t) eps_hat + (sigma_t|s sigma_s / sigma_t) noise``. The sampler
  passes the process's own reverse update as ``step_fn`` (so a process with other channels, e.g.
  categorical atom types, keeps its exact transition); without one the Gaussian formula above is used.
* ``ddim``: Song et al. (2021), ``z_s = alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat + std noise``
  with ``std = eta * sigma_t|s sigma_s / sigma_t``; ``eta = 0`` is the deterministic (probability
  flow) first-order solver, ``eta = 1`` is the ancestral step again.
* ``dpm2``: DPM-Solver++(2M) (Lu et al., 2022), the second-order multistep exponential integrator
  in data prediction: with ``h_k = lambda_{k+1} - lambda_k`` and ``r = h_{k-1} / h_k``,
  ``z_{k+1} = (sigma_{k+1} / sigma_k) z_k - alpha_{k+1} expm1(-h_k) D_k``,
  ``D_k = (1 + 1/(2r)) x0_k - 1/(2r) x0_{k-1}``, first order on the first and the last step. The
  reference implementation keeps the last step second order from 15 steps up; on EDM's
  ``polynomial_2`` schedule with a time-uniform grid the last step spans a large ``lambda`` interval
  (``h ~ 3.1`` vs ``h_prev ~ 0.7`` at 20 steps) and the extrapolation is then unstable: on the 1-D
  Gaussian toy of the tests the final error at 20 steps is 0.087 with a second-order last step and
  0.0045 with a first-order one (DDIM: 0.069).
* ``dpm2sde``: SDE-DPM-Solver++(2M) (Lu et al., 2022, the stochastic variant, midpoint form),
  ``z_{k+1} = (sigma_{k+1} / sigma_k) e^{-h_k} z_k + alpha_{k+1} (1 - e^{-2 h_k}) D_k
  + sigma_{k+1} sqrt(1 - e^{-2 h_k}) noise`` with the same ``D_k`` as ``dpm2``. With ``D_k = x0_k``
  (first order) this *is* EDM's ancestral step ``p(z_s | z_t)`` (same mean, same variance:
  ``e^{-h} = alpha_t sigma_s / (sigma_t alpha_s)``, ``1 - e^{-2h} = sigma_{t|s}^2 / sigma_t^2``), so
  it keeps the ancestral sampler's noise, which corrects the errors of an imperfect noise
  predictor, and adds the second-order correction of ``dpm2`` for fewer steps.

Noise injection (``churn``, :mod:`moldiff.sampling.churn`): before the network call of step ``k``
the state is lifted from ``gamma_k`` to ``gamma_hat_k >= gamma_k`` and the step then runs from
``gamma_hat_k`` to ``gamma_{k+1}``: every formula above with ``(alpha_k, sigma_k, lambda_k)`` of the
lifted level. The multistep solvers take a lifted step with first order: the fresh noise moves
the state off the trajectory along which the history ``x0_{k-1}`` was evaluated, so the finite
difference ``(x0_k - x0_{k-1}) / h_{k-1}`` would measure that noise, not the derivative, and
amplify it by ``1/(2r) = h_k / (2 h_{k-1})``, large since the lifted step is longer (on the 1-D
Gaussian toy, 200 steps with churn 0.3, keeping the history diverges). The next step, if not
lifted, is second order again, with ``h_{k-1} = lambda_k - lambda_hat_{k-1}`` (the ``lambda``
spacing of the two network calls). Without churn the updates are unchanged, bit for bit.

States are tuples of tensors (``(pos, h)`` for molecules; any tuple for the toy problems in the
tests). All coefficients are computed in float64 from the schedule and then cast; a ``project``
callback re-centres the positions after every update, so the zero centre-of-mass subspace is
kept. Every update is a linear combination of states and network outputs with scalar
coefficients, hence E(3)-equivariant whenever the noise predictor is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.sampling.churn import Churn

State = tuple[torch.Tensor, ...]
#: ``eps_at(z, k) -> eps_hat`` at grid point ``k`` (the caller maps ``k`` to time and batch).
EpsAt = Callable[[State, int], State]
#: ``noise_fn(k) -> standard noise`` (zero-CoM for positions) for the step leaving grid point ``k``.
NoiseFn = Callable[[int], State]
#: ``project(z) -> z`` applied after every update (re-centring of positions).
Project = Callable[[State], State]
#: ``callback(k, z)`` called with the state reached after step ``k``.
Callback = Callable[[int, State], None]
#: ``step_fn(k, z, eps, noise) -> z`` a process's own ancestral update from grid point ``k`` to ``k + 1``.
StepFn = Callable[[int, State, State, State], State]

#: Every sampler, a solver registered here (:data:`moldiff.sampling.sampler.SAMPLERS` is this tuple).
SOLVERS: tuple[str, ...] = ("ancestral", "ddim", "dpm2", "dpm2sde")


def grid_gammas(schedule: NoiseSchedule, grid: torch.Tensor) -> torch.Tensor:
    """``gamma`` at integer timesteps ``grid`` as float64 (CPU).

    Args:
        schedule: the noise schedule (``T`` = ``schedule.timesteps``).
        grid: ``[S + 1]`` integer timesteps.

    Returns:
        ``[S + 1]`` float64 tensor.

    >>> g = grid_gammas(NoiseSchedule("polynomial_2", 1000), torch.tensor([1000, 0]))
    >>> [round(float(v), 2) for v in g]
    [11.51, -11.51]
    """
    t = grid.detach().cpu().to(torch.float64) / schedule.timesteps
    return schedule.gamma(t.to(schedule.gamma_table.device)).detach().cpu().to(torch.float64)


def _identity(z: State) -> State:
    return z


def _combine(a: float, z: State, b: float, e: State) -> State:
    return tuple(a * zi + b * ei for zi, ei in zip(z, e, strict=True))


def _starts(gammas: torch.Tensor, churn: Churn | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(gamma, alpha, sigma)``, ``[S]`` each, of the level every step starts from.

    The grid's own (slices of the grid's arrays, so the updates without churn are bit for bit the
    same), or the lifted levels of ``churn``.
    """
    if churn is None:
        alpha, sigma = NoiseSchedule.alpha_from_gamma(gammas), NoiseSchedule.sigma_from_gamma(gammas)
        return gammas[:-1], alpha[:-1], sigma[:-1]
    start = churn.gammas
    if start.shape != (len(gammas) - 1,):
        raise ValueError(f"churn.gammas must hold one level per step ({len(gammas) - 1}), got {tuple(start.shape)}")
    return start, NoiseSchedule.alpha_from_gamma(start), NoiseSchedule.sigma_from_gamma(start)


def _num_steps(gammas: torch.Tensor, num_steps: int | None) -> int:
    """Steps to take: all ``S`` of the grid, or the first ``num_steps`` (the caller ends the run itself)."""
    steps = len(gammas) - 1
    if num_steps is None:
        return steps
    if not 0 <= num_steps <= steps:
        raise ValueError(f"num_steps must be between 0 and {steps}, got {num_steps}")
    return num_steps


def ancestral_solve(
    z: State, eps_at: EpsAt, gammas: torch.Tensor, noise_fn: NoiseFn, step_fn: StepFn | None = None,
    project: Project = _identity, callback: Callback | None = None, churn: Churn | None = None,
    num_steps: int | None = None,
) -> State:
    """EDM's ancestral sampler ``p(z_s | z_t)`` from grid point 0 to grid point ``S``.

    Every step draws its noise first, then evaluates the network (the order EDM's sampler draws
    random numbers in), then applies ``step_fn`` (the process's update; it re-centres positions
    itself) or, without one, the Gaussian update of the module docstring followed by ``project``.

    Args:
        z: initial state at grid point 0.
        eps_at: noise predictor at grid point ``k`` (called once per step).
        gammas: ``[S + 1]`` float64 ``gamma`` of the grid.
        noise_fn: standard noise for a step (zero-CoM for positions).
        step_fn: the process's own reverse update ``(k, z, eps, noise) -> z`` (``None``: the formula).
        project: applied after every update when ``step_fn`` is ``None``.
        callback: called as ``callback(k, z)`` after step ``k``.
        churn: noise injection before each step (:class:`~moldiff.sampling.churn.Churn`; ``step_fn``
            must then step from the lifted level), or ``None``.
        num_steps: take only the first ``num_steps`` steps (``None``: all).

    Returns:
        The state at the last grid point (grid point ``num_steps`` when given).
    """
    sigma = NoiseSchedule.sigma_from_gamma(gammas)
    start, _, sigma_start = _starts(gammas, churn)
    for k in range(_num_steps(gammas, num_steps)):
        if churn is not None:
            z = churn.apply(k, z, gammas, project)
        noise = noise_fn(k)
        eps = eps_at(z, k)
        if step_fn is not None:
            z = step_fn(k, z, eps, noise)
        else:
            sigma2_ts, sigma_ts, alpha_ts = NoiseSchedule.sigma_and_alpha_t_given_s(start[k], gammas[k + 1])
            c_eps = -float(sigma2_ts / (alpha_ts * sigma_start[k]))
            std = float(sigma_ts * sigma[k + 1] / sigma_start[k])
            z = _combine(1.0 / float(alpha_ts), z, c_eps, eps)
            z = project(tuple(zi + std * ni for zi, ni in zip(z, noise, strict=True)))
        if callback is not None:
            callback(k, z)
    return z


def ddim_solve(
    z: State, eps_at: EpsAt, gammas: torch.Tensor, eta: float = 0.0, noise_fn: NoiseFn | None = None,
    project: Project = _identity, callback: Callback | None = None, churn: Churn | None = None,
    num_steps: int | None = None,
) -> State:
    """DDIM from grid point 0 to grid point ``S``.

    ``z_s = (alpha_s / alpha_t) z_t + (sqrt(sigma_s^2 - std^2) - alpha_s sigma_t / alpha_t) eps_hat
    + std noise``, which is ``alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat + std noise`` written
    without forming ``x0_hat`` (whose ``1 / alpha_T ~ 316`` would amplify rounding).

    Args:
        z: initial state at grid point 0 (e.g. ``(pos [N, 3], h [N, F])``).
        eps_at: noise predictor at grid point ``k``.
        gammas: ``[S + 1]`` float64 ``gamma`` of the grid (decreasing time, so increasing SNR).
        eta: stochasticity; 0 = deterministic, 1 = ancestral posterior variance.
        noise_fn: standard noise for a step (required when ``eta > 0``).
        project: applied after every update (re-centring).
        callback: called as ``callback(k, z)`` after step ``k``.
        churn: noise injection before each step (the step then starts from the lifted level), or ``None``.
        num_steps: take only the first ``num_steps`` steps (``None``: all).

    Returns:
        The state at the last grid point (grid point ``num_steps`` when given).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and noise_fn is None:
        raise ValueError("ddim with eta > 0 needs a noise_fn")
    alpha, sigma = NoiseSchedule.alpha_from_gamma(gammas), NoiseSchedule.sigma_from_gamma(gammas)
    start, alpha_start, sigma_start = _starts(gammas, churn)
    for k in range(_num_steps(gammas, num_steps)):
        if churn is not None:
            z = churn.apply(k, z, gammas, project)
        eps = eps_at(z, k)
        _, sigma_ts, _ = NoiseSchedule.sigma_and_alpha_t_given_s(start[k], gammas[k + 1])
        std = eta * float(sigma_ts * sigma[k + 1] / sigma_start[k])
        c_eps = float(torch.sqrt((sigma[k + 1] ** 2 - std**2).clamp(min=0))) - float(
            alpha[k + 1] * sigma_start[k] / alpha_start[k]
        )
        z = _combine(float(alpha[k + 1] / alpha_start[k]), z, c_eps, eps)
        if std > 0:
            z = tuple(zi + std * ni for zi, ni in zip(z, noise_fn(k), strict=True))  # type: ignore[misc]
        z = project(z)
        if callback is not None:
            callback(k, z)
    return z


def dpm2_solve(
    z: State, eps_at: EpsAt, gammas: torch.Tensor, project: Project = _identity,
    callback: Callback | None = None, lower_order_final: bool = True, churn: Churn | None = None,
    num_steps: int | None = None,
) -> State:
    """DPM-Solver++(2M) (data prediction, multistep, second order) from grid point 0 to ``S``.

    Args:
        z: initial state at grid point 0.
        eps_at: noise predictor at grid point ``k`` (called once per step).
        gammas: ``[S + 1]`` float64 ``gamma`` of the grid.
        project: applied after every update (re-centring).
        callback: called as ``callback(k, z)`` after step ``k``.
        lower_order_final: take the last step with first order (see the module docstring).
        churn: noise injection before each step (see the module docstring for the history), or ``None``.
        num_steps: take only the first ``num_steps`` steps (``None``: all).

    Returns:
        The state at the last grid point (grid point ``num_steps`` when given).
    """
    return _dpm2m(z, eps_at, gammas, None, project, callback, lower_order_final, 2, churn, num_steps)


def dpm2sde_solve(
    z: State, eps_at: EpsAt, gammas: torch.Tensor, noise_fn: NoiseFn, project: Project = _identity,
    callback: Callback | None = None, lower_order_final: bool = True, order: int = 2,
    churn: Churn | None = None, num_steps: int | None = None,
) -> State:
    """SDE-DPM-Solver++(2M) from grid point 0 to ``S`` (see the module docstring).

    Args:
        z: initial state at grid point 0.
        eps_at: noise predictor at grid point ``k`` (called once per step).
        gammas: ``[S + 1]`` float64 ``gamma`` of the grid.
        noise_fn: standard noise for a step (zero-CoM for positions).
        project: applied after every update (re-centring).
        callback: called as ``callback(k, z)`` after step ``k``.
        lower_order_final: take the last step with first order.
        order: 2, or 1 for the first-order method (EDM's ancestral sampler; used by the tests).
        churn: noise injection before each step (see the module docstring for the history), or ``None``.
        num_steps: take only the first ``num_steps`` steps (``None``: all).

    Returns:
        The state at the last grid point (grid point ``num_steps`` when given).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    return _dpm2m(z, eps_at, gammas, noise_fn, project, callback, lower_order_final, order, churn, num_steps)


def _dpm2m(
    z: State, eps_at: EpsAt, gammas: torch.Tensor, noise_fn: NoiseFn | None, project: Project,
    callback: Callback | None, lower_order_final: bool, order: int, churn: Churn | None = None,
    num_steps: int | None = None,
) -> State:
    """The multistep loop shared by ``dpm2`` (``noise_fn=None``: the ODE) and ``dpm2sde`` (the SDE).

    ODE: ``z' = (sigma'/sigma) z + alpha' (1 - e^{-h}) D``; SDE: ``z' = (sigma'/sigma) e^{-h} z
    + alpha' (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) noise``; ``D`` as in the module docstring.
    """
    sde = noise_fn is not None
    steps = len(gammas) - 1
    alpha, sigma = NoiseSchedule.alpha_from_gamma(gammas), NoiseSchedule.sigma_from_gamma(gammas)
    lam = -0.5 * gammas
    start, alpha_start, sigma_start = _starts(gammas, churn)
    lam_start = lam[:-1] if churn is None else -0.5 * start
    x0_prev: State | None = None
    h_prev = 0.0
    for k in range(_num_steps(gammas, num_steps)):
        lifted = churn is not None and bool(start[k] > gammas[k])
        if lifted:
            z = churn.apply(k, z, gammas, project)  # type: ignore[union-attr]
        eps = eps_at(z, k)
        x0 = _combine(1.0 / float(alpha_start[k]), z, -float(sigma_start[k] / alpha_start[k]), eps)
        h = float(lam[k + 1] - lam_start[k])
        first_order = (order == 1 or x0_prev is None or h_prev <= 0.0 or lifted
                       or (lower_order_final and k == steps - 1))
        if first_order:
            d = x0
        else:
            c = 0.5 * h / h_prev  # 1 / (2 r), the midpoint form
            d = _combine(1.0 + c, x0, -c, x0_prev)  # type: ignore[arg-type]
        one_minus = -float(torch.expm1(torch.tensor(-(2.0 if sde else 1.0) * h, dtype=torch.float64)))
        c_z = float(sigma[k + 1] / sigma_start[k])
        if sde:
            c_z *= float(torch.exp(torch.tensor(-h, dtype=torch.float64)))
        z = _combine(c_z, z, float(alpha[k + 1]) * one_minus, d)
        if sde:
            std = float(sigma[k + 1]) * one_minus**0.5
            z = tuple(zi + std * ni for zi, ni in zip(z, noise_fn(k), strict=True))  # type: ignore[misc]
        z = project(z)
        x0_prev = x0
        if churn is None:
            h_prev = h
        elif k + 1 < steps:  # with churn: the lambda spacing of the two network calls
            h_prev = float(lam_start[k + 1] - lam_start[k])
        if callback is not None:
            callback(k, z)
    return z


def solve(
    method: str, z: State, eps_at: EpsAt, gammas: torch.Tensor, *, eta: float = 0.0,
    noise_fn: NoiseFn | None = None, project: Project = _identity, callback: Callback | None = None,
    step_fn: StepFn | None = None, churn: Churn | None = None, num_steps: int | None = None,
) -> State:
    """Dispatch to a registered solver by name (one of :data:`SOLVERS`).

    ``step_fn`` is the process's ancestral update (``ancestral`` only; see :func:`ancestral_solve`).
    ``churn``: noise injection before every step (:mod:`moldiff.sampling.churn`; ``None``: none).
    ``num_steps``: take only the first steps (``None``: all; the sampler's ``final="mean"`` ends the run itself).

    >>> sched = NoiseSchedule("polynomial_2", 100)
    >>> gam = grid_gammas(sched, torch.tensor([100, 50, 0]))
    >>> x0 = torch.tensor([0.7])
    >>> exact = lambda z, k: ((z[0] - NoiseSchedule.alpha_from_gamma(gam[k]) * x0)
    ...                       / NoiseSchedule.sigma_from_gamma(gam[k]),)
    >>> z0 = solve("ddim", (torch.tensor([0.3]),), exact, gam)
    >>> round(float(z0[0]), 2)  # z_0 = alpha_0 x0 + sigma_0 eps, sigma_0 ~ 0.003
    0.7
    """
    if method == "ancestral":
        if noise_fn is None:
            raise ValueError("ancestral needs a noise_fn")
        return ancestral_solve(z, eps_at, gammas, noise_fn, step_fn=step_fn, project=project, callback=callback,
                               churn=churn, num_steps=num_steps)
    if method == "ddim":
        return ddim_solve(z, eps_at, gammas, eta=eta, noise_fn=noise_fn, project=project, callback=callback,
                          churn=churn, num_steps=num_steps)
    if method == "dpm2":
        return dpm2_solve(z, eps_at, gammas, project=project, callback=callback, churn=churn, num_steps=num_steps)
    if method == "dpm2sde":
        if noise_fn is None:
            raise ValueError("dpm2sde needs a noise_fn")
        return dpm2sde_solve(z, eps_at, gammas, noise_fn, project=project, callback=callback, churn=churn,
                             num_steps=num_steps)
    raise ValueError(f"unknown solver {method!r}; allowed: {list(SOLVERS)}")

