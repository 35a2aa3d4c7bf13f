"""Noise schedules: all schedule algebra (gamma, alpha, sigma, SNR, transitions) lives here.

Conventions follow EDM / VDM (Kingma et al., 2021): ``gamma(t) = -log(alpha_t^2 / sigma_t^2)``,
``alpha_t^2 = sigmoid(-gamma_t)``, ``sigma_t^2 = sigmoid(gamma_t)``, so ``alpha^2 + sigma^2 = 1``.
Time ``t`` is normalised to [0, 1]; the schedule is a lookup table over the ``T + 1`` integer steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def clip_noise_schedule(alphas2: np.ndarray, clip_value: float = 0.001) -> np.ndarray:
    """Clip the per-step ratio ``alpha_t^2 / alpha_{t-1}^2`` from below (EDM's stabilisation).

    Args:
        alphas2: ``[T + 1]`` cumulative ``alpha^2`` values.
        clip_value: smallest allowed per-step ratio.

    Returns:
        ``[T + 1]`` clipped cumulative values.
    """
    padded = np.concatenate([np.ones(1), alphas2])
    steps = np.clip(padded[1:] / padded[:-1], clip_value, 1.0)
    return np.cumprod(steps)


def polynomial_alphas2(timesteps: int, precision: float = 1e-5, power: float = 2.0) -> np.ndarray:
    """EDM's ``polynomial_<power>`` schedule: ``alpha^2(t) = (1 - t^power)^2``, clipped and squeezed.

    EDM evaluates the polynomial on ``linspace(0, T + 1, T + 1) / (T + 1)``, i.e. on T + 1 evenly
    spaced points spanning [0, 1]; we reproduce that grid exactly.

    Args:
        timesteps: number of diffusion steps ``T``.
        precision: ``s``; the result is mapped to ``(1 - 2s) alpha^2 + s`` so that
            ``alpha^2`` stays in ``[s, 1 - s]``.
        power: polynomial exponent (2 for EDM's QM9 models).

    Returns:
        ``[T + 1]`` array of ``alpha_t^2``.

    >>> a2 = polynomial_alphas2(1000)
    >>> round(float(a2[0]), 5), round(float(a2[-1]), 5)
    (0.99999, 1e-05)
    """
    steps = timesteps + 1
    x = np.linspace(0, steps, steps) / steps
    alphas2 = (1 - np.power(x, power)) ** 2
    alphas2 = clip_noise_schedule(alphas2, clip_value=0.001)
    return (1 - 2 * precision) * alphas2 + precision


def cosine_alphas2(timesteps: int, s: float = 0.008) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021), as implemented in EDM (``[T + 1]`` values)."""
    steps = timesteps + 2
    x = np.linspace(0, steps, steps)
    ac = np.cos(((x / steps) + s) / (1 + s) * np.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = np.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
    return np.cumprod(1.0 - betas)


SCHEDULES = ("polynomial_2", "polynomial_3", "cosine")


class NoiseSchedule(nn.Module):
    """Predefined (non-learned) noise schedule stored as a ``[T + 1]`` buffer of ``gamma`` values.

    Args:
        name: ``"cosine"`` or ``"polynomial_<power>"`` (EDM's QM9 default: ``polynomial_2``).
        timesteps: ``T``.
        precision: ``s`` of the polynomial schedule (EDM: 1e-5).

    >>> sched = NoiseSchedule("polynomial_2", 1000)
    >>> t = torch.tensor([0.0, 0.5, 1.0])
    >>> bool(torch.allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones(3)))
    True
    """

    def __init__(self, name: str = "polynomial_2", timesteps: int = 1000, precision: float = 1e-5) -> None:
        super().__init__()
        if timesteps <= 0:
            raise ValueError(f"timesteps must be > 0, got {timesteps}")
        if name == "cosine":
            alphas2 = cosine_alphas2(timesteps)
        elif name.startswith("polynomial_"):
            try:
                power = float(name.split("_", 1)[1])
            except ValueError:
                raise ValueError(f"unknown noise schedule {name!r}; allowed: {list(SCHEDULES)}") from None
            alphas2 = polynomial_alphas2(timesteps, precision=precision, power=power)
        else:
            raise ValueError(f"unknown noise schedule {name!r}; allowed: {list(SCHEDULES)}")
        sigmas2 = 1.0 - alphas2
        gamma = -(np.log(alphas2) - np.log(sigmas2))
        self.name = name
        self.timesteps = timesteps
        self.register_buffer("gamma_table", torch.from_numpy(gamma).float(), persistent=False)

    def extra_repr(self) -> str:
        """Schedule name and T in the module repr."""
        return f"name={self.name!r}, timesteps={self.timesteps}"

    # ------------------------------------------------------------------ basic quantities
    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """``gamma(t)`` for normalised ``t`` in [0, 1] (rounded to the nearest integer step)."""
        t_int = torch.round(t * self.timesteps).long().clamp(0, self.timesteps)
        return self.gamma_table[t_int]

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_t = sqrt(sigmoid(-gamma_t))``."""
        return torch.sqrt(torch.sigmoid(-self.gamma(t)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t = sqrt(sigmoid(gamma_t))``."""
        return torch.sqrt(torch.sigmoid(self.gamma(t)))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_t^2 / sigma_t^2 = exp(-gamma_t)``."""
        return torch.exp(-self.gamma(t))

    # ------------------------------------------------------------------ gamma-level helpers
    @staticmethod
    def alpha_from_gamma(gamma: torch.Tensor) -> torch.Tensor:
        """``alpha`` from ``gamma``."""
        return torch.sqrt(torch.sigmoid(-gamma))

    @staticmethod
    def sigma_from_gamma(gamma: torch.Tensor) -> torch.Tensor:
        """``sigma`` from ``gamma``."""
        return torch.sqrt(torch.sigmoid(gamma))

    @staticmethod
    def sigma_and_alpha_t_given_s(
        gamma_t: torch.Tensor, gamma_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transition ``q(z_t | z_s)`` for ``s < t``: returns ``(sigma2_t|s, sigma_t|s, alpha_t|s)``.

        ``alpha_t|s = alpha_t / alpha_s`` and ``sigma2_t|s = 1 - alpha_t|s^2``, computed stably with
        ``expm1``/``softplus`` as in EDM.
        """
        sigma2 = -torch.expm1(F.softplus(gamma_s) - F.softplus(gamma_t))
        log_alpha2_t_given_s = F.logsigmoid(-gamma_t) - F.logsigmoid(-gamma_s)
        alpha = torch.exp(0.5 * log_alpha2_t_given_s)
        return sigma2, torch.sqrt(sigma2), alpha
