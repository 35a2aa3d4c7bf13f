"""The one way in to sampling: a frozen :class:`SamplingConfig`, validated once when it is built.

The CLI and :meth:`moldiff.pipeline.MolDiff.iter_samples` build it from their arguments; batching
(:mod:`moldiff.sampling.batching`), the sampler and the solver read its fields, so the number of
steps, the method and ``eta`` travel as one checked object instead of loose keyword arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moldiff.constants import MAX_SEED
from moldiff.sampling.churn import MAX_CHURN
from moldiff.sampling.solvers import SOLVERS

__all__ = ["FINALS", "MAX_CHURN", "MAX_SEED", "SPACINGS", "SamplingConfig"]

#: Step spacings (the same names as ``moldiff.sampling.sampler.SPACINGS``; a test checks).
SPACINGS: tuple[str, ...] = ("uniform", "quadratic", "logsnr")

#: How the last step ends (``SamplingConfig.final``, ``moldiff sample --final``).
FINALS: tuple[str, ...] = ("sample", "mean")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample: solver, steps, stochasticity, seed and batch budgets.

    Attributes:
        method: one of :data:`~moldiff.sampling.solvers.SOLVERS` (``ancestral``, ``ddim``, ``dpm2``, ``dpm2sde``).
        steps: denoising steps (``None``: all ``T`` of the model; checked against ``T`` by :meth:`num_steps`).
        eta: DDIM stochasticity in ``[0, 1]`` (``ddim`` only): 0 deterministic, 1 the ancestral variance.
        seed: seed of the run (``None``: non-deterministic); batch ``k`` derives its own
            (:func:`~moldiff.sampling.batching.batch_seed`).
        batch_size: at most this many molecules per batch (``None``: no limit).
        max_atoms_per_batch: atom budget per batch (``None``: automatic for the device).
        max_edges_per_batch: edge budget per batch (``None``: automatic with an automatic atom budget, else none).
        spacing: where the steps lie in time: ``uniform`` (default), ``quadratic`` or ``logsnr``
            (:func:`~moldiff.sampling.sampler.timestep_grid`).
        churn: noise injection before every step (Karras et al. 2022, S_churn; VEDA's annealing), in
            ``[0, sqrt(2) - 1]``: the state at ``t`` is lifted by fresh noise to the level whose VE
            noise ``sigma / alpha`` is ``(1 + churn)`` times larger (``gamma`` raised by ``2 log(1 +
            churn)``, rounded to an integer timestep ``t_hat``), then the solver steps from ``t_hat``
            to the next grid point; categorical atom types and bonds are re-noised from ``t`` to
            ``t_hat`` by their forward transition. This is Karras' ``min(S_churn / N, sqrt(2) - 1)``
            (VEDA: 0.4). ``0`` (default): no injection, bit for bit the sampler without it
            (:mod:`~moldiff.sampling.churn`).
        churn_range: ``(lo, hi)`` normalised times ``t / T`` of the steps that get the injection
            (inclusive; Karras' S_tmin / S_tmax, given in time here); ``None``: every step. Needs ``churn > 0``.
        final: how the run ends: ``sample`` (default) steps to ``t = 0`` and draws ``p(x, h | z_0)``
            (positions ``x_hat_0`` plus noise of std ``sigma_0 / alpha_0``, types from ``z_0``);
            ``mean`` replaces the last step (last grid point ``t_1 > 0`` to 0) by the network's clean
            estimate at ``t_1``, without noise: positions ``x0_hat``, types and bonds the argmax of
            the clean logits (Gaussian types: of ``x0_hat``'s one-hot), as Karras' last Euler step
            to ``sigma = 0`` and DPM-Solver's ``denoise_to_zero``. One network call fewer.

    >>> SamplingConfig("ddim", steps=50, eta=0.5).num_steps(1000)
    50
    >>> SamplingConfig("dpm2", eta=0.5)
    Traceback (most recent call last):
    ...
    ValueError: eta is a ddim option; got eta=0.5 with sampler 'dpm2'
    """

    method: str = "ancestral"
    steps: int | None = None
    eta: float = 0.0
    seed: int | None = 0
    batch_size: int | None = None
    max_atoms_per_batch: int | None = None
    max_edges_per_batch: int | None = None
    spacing: str = "uniform"
    churn: float = 0.0
    churn_range: tuple[float, float] | None = None
    final: str = "sample"

    def __post_init__(self) -> None:
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown step spacing {self.spacing!r}; allowed: {list(SPACINGS)}")
        if self.final not in FINALS:
            raise ValueError(f"unknown final step {self.final!r}; allowed: {list(FINALS)}")
        churn = float(self.churn)
        if not (math.isfinite(churn) and 0.0 <= churn <= MAX_CHURN):
            raise ValueError(f"churn must be between 0 and sqrt(2) - 1 = {MAX_CHURN:.4f}, got {self.churn}")
        if self.churn_range is not None:
            try:
                lo_hi = tuple(float(v) for v in self.churn_range)
            except (TypeError, ValueError):
                lo_hi = ()
            if len(lo_hi) != 2 or not all(math.isfinite(v) for v in lo_hi) or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
                raise ValueError(f"churn_range must be two times 0 <= lo <= hi <= 1, got {self.churn_range}")
            if churn == 0.0:
                raise ValueError("churn_range needs churn > 0")
            object.__setattr__(self, "churn_range", lo_hi)
        if self.method not in SOLVERS:
            raise ValueError(f"unknown sampler {self.method!r}; allowed: {list(SOLVERS)}")
        if self.steps is not None and int(self.steps) < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.eta != 0.0 and self.method != "ddim":
            raise ValueError(f"eta is a ddim option; got eta={self.eta} with sampler {self.method!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be between 0 and 1, got {self.eta}")
        if self.seed is not None and not 0 <= int(self.seed) <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and 2^32 - 1, got {self.seed}")
        for name in ("batch_size", "max_atoms_per_batch", "max_edges_per_batch"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def num_steps(self, timesteps: int) -> int:
        """Steps for a model with ``timesteps`` (``T``): ``steps``, or ``T`` when unset; checked to be ``<= T``."""
        if self.steps is None:
            return int(timesteps)
        if not 1 <= int(self.steps) <= timesteps:
            raise ValueError(f"--steps must be between 1 and T={timesteps}, got {self.steps}")
        return int(self.steps)
