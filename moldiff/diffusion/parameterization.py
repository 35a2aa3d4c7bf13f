r"""What the network predicts, and how the training loss weights it over time.

A Gaussian process ``z_t = alpha_t x + sigma_t eps`` can train its network to predict the noise
``eps`` (EDM) or the clean molecule ``x0`` (EQGAT-diff, MiDi, SemlaFlow). Both name the same
denoising function; they differ in what the network's raw output means and therefore in how
optimisation sees the problem. The rest of the package (solvers, the variational bound, the final
step) consumes a noise prediction, so every parameterization converts its raw output to ``eps``
and to ``x0`` here, and nowhere else.

``precond`` is Karras et al.'s preconditioning ("Elucidating the design space", NeurIPS 2022),
written for this VP process as VEDA (AAAI 2026) uses it. With ``sigma_d`` the data's standard
deviation, ``x0_pos = c_skip z_pos + c_out out_pos`` with

    ``c_skip = alpha sigma_d^2 / (alpha^2 sigma_d^2 + sigma^2)``,
    ``c_out = sigma sigma_d / sqrt(alpha^2 sigma_d^2 + sigma^2)``.

For ``x ~ N(0, sigma_d^2)``, ``c_skip`` minimises ``E|c z - x|^2`` (the best clean estimate when the
network outputs 0) and ``c_out`` is the standard deviation of what is left, so the network's target
``(x - c_skip z) / c_out`` has unit variance at every noise level. At ``sigma -> 0``,
``x0 = z / alpha``; at ``alpha -> 0``, ``x0 = c_out out`` with ``c_out -> sigma_d``. It is Karras'
``c_skip, c_out`` at ``sigma_K = sigma / alpha`` applied to ``z / alpha``.

QM9's ``sigma_d``: 1.397 Angstrom (``diffusion.sigma_data: 1.4``), the root mean square of the
zero-CoM coordinates of EDM's training split (100,000 molecules, 1,803,097 atoms; per axis 1.32,
1.61, 1.24, since QM9's frames are not randomly oriented), measured with::

    python -c "import numpy as np; from moldiff.data.qm9 import load_qm9; \
    from moldiff.data.splits import qm9_split; a = load_qm9(progress=False).subset(qm9_split('train')); \
    b = a.batch.astype(np.int64); p = a.pos.astype(np.float64); \
    c = np.stack([np.bincount(b, p[:, k]) for k in range(3)], 1) / a.n_atoms[:, None]; \
    print(np.sqrt(((p - c[b]) ** 2).mean()))"

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
PARAMETERIZATIONS = ("eps", "x0", "precond")
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

    ``precond``: Karras' preconditioning on the positions, ``x0_pos = c_skip z_pos + c_out out_pos``
    (module docstring); ``out_pos`` is the denoiser's zero-CoM displacement, so ``x0_pos`` stays
    zero-CoM when ``z_pos`` is. The features keep the ``x0`` rule (``x0_h = out_h``; with
    categorical atom types the feature output is the clean-type logits anyway). There is no
    ``c_in``: the VP input already has a variance between ``sigma_d^2`` and 1, and an EGNN's
    coordinate input cannot be rescaled without changing the interatomic distances it reads.

    Args:
        name: one of :data:`PARAMETERIZATIONS`.
        sigma_data: ``sigma_d`` of ``precond``, the per-coordinate standard deviation of the
            zero-CoM positions in the normalised diffusion space (Angstrom / ``norm_values[0]``);
            ignored by ``eps`` and ``x0``. QM9: 1.397 Angstrom (measured as in the module docstring).

    >>> p = Parameterization("x0")
    >>> z = (torch.zeros(2, 3), torch.zeros(2, 1))
    >>> out = (torch.ones(2, 3), torch.full((2, 1), 2.0))
    >>> a, s = torch.full((2, 1), 0.6), torch.full((2, 1), 0.8)
    >>> [float(v[0, 0]) for v in p.to_eps(out, z, a, s)]  # (z - alpha x0) / sigma
    [-0.75, -1.5]
    """

    name: str = "eps"
    sigma_data: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {list(PARAMETERIZATIONS)}, got {self.name!r}")
        sd = self.sigma_data
        if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not sd > 0:  # not NaN either
            raise ValueError(f"parameterization sigma_data must be a number > 0, got {self.sigma_data!r}")

    def precond_coefficients(self, alpha: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out)`` of ``precond`` for ``alpha, sigma`` (any matching shapes)."""
        sd2 = self.sigma_data**2
        var = alpha**2 * sd2 + sigma**2  # Var(z) for data of variance sigma_d^2
        return alpha * sd2 / var, sigma * self.sigma_data / var.sqrt()

    def to_eps(self, out: State, z: State, alpha: torch.Tensor, sigma: torch.Tensor) -> State:
        """Noise prediction from the raw output (``alpha``, ``sigma``: ``[N, 1]`` per atom)."""
        if self.name == "eps":
            return out
        if self.name == "precond":  # (z - alpha x0) / sigma in closed form: no cancellation as sigma -> 0
            sd, var = self.sigma_data, alpha**2 * self.sigma_data**2 + sigma**2
            eps_pos = sigma / var * z[0] - alpha * sd / var.sqrt() * out[0]
            return eps_pos, (z[1] - alpha * out[1]) / sigma
        x0 = self.to_x0(out, z, alpha, sigma)
        return (z[0] - alpha * x0[0]) / sigma, (z[1] - alpha * x0[1]) / sigma

    def to_x0(self, out: State, z: State, alpha: torch.Tensor, sigma: torch.Tensor) -> State:
        """Clean-data prediction from the raw output."""
        if self.name == "x0":
            return z[0] + out[0], out[1]
        if self.name == "precond":
            c_skip, c_out = self.precond_coefficients(alpha, sigma)
            return c_skip * z[0] + c_out * out[0], out[1]
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
