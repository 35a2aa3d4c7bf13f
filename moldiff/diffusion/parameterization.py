"""What the network predicts, and how the training loss weights it over time.

A Gaussian process ``z_t = alpha_t x + sigma_t eps`` can train its network to predict the noise
``eps`` (EDM) or the clean molecule ``x0`` (EQGAT-diff, MiDi, SemlaFlow). Both name the same
denoising function; they differ in what the network's raw output means and therefore in how
optimisation sees the problem. The rest of the package (solvers, the variational bound, the final
step) consumes a noise prediction, so every parameterization converts its raw output to ``eps``
and to ``x0`` here, and nowhere else.

Loss weighting is independent of the parameterization: with ``SNR_t = alpha_t^2 / sigma_t^2``,
``|x0 - x0_hat|^2 = |eps - eps_hat|^2 / SNR_t``, so any weighting is a weight on the ``x0`` error
(or equivalently on the ``eps`` error). ``"edm"`` is EDM's uniform ``eps`` objective (an ``x0``
weight of ``SNR_t``); ``"snr_clamp"`` weights the ``x0`` error by ``clamp(SNR_t, lo, hi)``:
``(0.05, 1.5)`` is EQGAT-diff's choice (Le et al., ICLR 2024) and ``(0, 5)`` is Min-SNR-5
(Hang et al., ICCV 2023) written on ``x0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Names accepted by ``diffusion.parameterization``.
PARAMETERIZATIONS = ("eps", "x0")
#: Names accepted by ``diffusion.loss_weighting``.
LOSS_WEIGHTINGS = ("edm", "snr_clamp")

State = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Parameterization:
    """Maps the denoiser's raw output ``(out_pos, out_h)`` to noise and clean-data predictions.

    ``eps``: the output is the noise (EDM). ``x0``: the positions are the network's final
    coordinates (``x0_pos = z_pos + out_pos``, since the EGNN returns a displacement of its input
    coordinates, as in EQGAT-diff whose layers move the noisy coordinates to the clean ones) and the
    features are the clean features (``x0_h = out_h``).

    Args:
        name: one of :data:`PARAMETERIZATIONS`.

    >>> p = Parameterization("x0")
    >>> z = (torch.zeros(2, 3), torch.zeros(2, 1))
    >>> out = (torch.ones(2, 3), torch.full((2, 1), 2.0))
    >>> a, s = torch.full((2, 1), 0.6), torch.full((2, 1), 0.8)
    >>> [float(v[0, 0]) for v in p.to_eps(out, z, a, s)]  # (z - alpha x0) / sigma
    [-0.75, -1.5]
    """

    name: str = "eps"

    def __post_init__(self) -> None:
        if self.name not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {list(PARAMETERIZATIONS)}, got {self.name!r}")

    def to_eps(self, out: State, z: State, alpha: torch.Tensor, sigma: torch.Tensor) -> State:
        """Noise prediction from the raw output (``alpha``, ``sigma``: ``[N, 1]`` per atom)."""
        if self.name == "eps":
            return out
        x0 = self.to_x0(out, z, alpha, sigma)
        return (z[0] - alpha * x0[0]) / sigma, (z[1] - alpha * x0[1]) / sigma

    def to_x0(self, out: State, z: State, alpha: torch.Tensor, sigma: torch.Tensor) -> State:
        """Clean-data prediction from the raw output."""
        if self.name == "x0":
            return z[0] + out[0], out[1]
        return (z[0] - sigma * out[0]) / alpha, (z[1] - sigma * out[1]) / alpha


@dataclass(frozen=True)
class LossWeighting:
    """Per-molecule weight of the squared ``x0`` error as a function of ``SNR_t``.

    Args:
        name: ``"edm"`` (uniform on ``eps``; the loss is computed on ``eps`` exactly as EDM does) or
            ``"snr_clamp"`` (``clamp(SNR_t, lo, hi)`` on the ``x0`` error).
        lo: lower clamp of ``"snr_clamp"``.
        hi: upper clamp of ``"snr_clamp"``.

    >>> w = LossWeighting("snr_clamp", 0.05, 1.5)
    >>> [round(float(v), 2) for v in w.x0_weight(torch.tensor([0.001, 1.0, 1e4]))]
    [0.05, 1.0, 1.5]
    """

    name: str = "edm"
    lo: float = 0.05
    hi: float = 1.5

    def __post_init__(self) -> None:
        if self.name not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)}, got {self.name!r}")
        if not 0.0 <= self.lo < self.hi:
            raise ValueError(f"snr_clamp needs 0 <= lo < hi, got ({self.lo}, {self.hi})")

    @property
    def on_eps(self) -> bool:
        """Whether the loss is EDM's (computed on the noise, with EDM's ``L_0`` term at ``t = 0``)."""
        return self.name == "edm"

    def x0_weight(self, snr: torch.Tensor) -> torch.Tensor:
        """Weight of the squared ``x0`` error for ``snr [B]``."""
        if self.name == "edm":
            return snr
        return snr.clamp(min=self.lo, max=self.hi)
