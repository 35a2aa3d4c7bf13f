"""Variational-bound (likelihood) terms of :class:`~moldiff.diffusion.process.EquivariantDiffusion`.

This module owns EDM's likelihood maths, per molecule: the prior KL ``KL(q(z_T | x) || N(0, I))``,
the Gaussian normalisation constant of ``p(x | z_0)`` on the zero centre-of-mass subspace, the
discretised ``log p(x, h | z_0)`` of the types and charges, and the unbiased variational bound
:func:`nll` that validation reports. The training loss (:mod:`moldiff.diffusion.losses`) reuses the
first and third as its ``L_0`` term and prior KL.

The functions take the process as their first argument; ``EquivariantDiffusion`` keeps
same-named methods that delegate here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import scatter_sum
from moldiff.types import MolBatch

if TYPE_CHECKING:
    from moldiff.diffusion.process import EquivariantDiffusion

_EPS = 1e-10


def _cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2)))


def kl_prior(
    process: EquivariantDiffusion, pos: torch.Tensor, h: torch.Tensor, batch: torch.Tensor, num_graphs: int
) -> torch.Tensor:
    """``KL(q(z_T | x) || N(0, I))`` per molecule (negligible; a schedule sanity check).

    Args:
        process: the diffusion process (its schedule gives ``gamma(1)``).
        pos: ``[N, 3]`` normalised zero-CoM positions.
        h: ``[N, F]`` normalised features.
        batch: ``[N]`` molecule index.
        num_graphs: ``B``.

    Returns:
        ``[B]`` KL, the positions counted on the ``3 (n - 1)``-dimensional zero-CoM subspace.
    """
    gamma_T = process.schedule.gamma(torch.ones(1, device=pos.device))
    a_T, s_T = NoiseSchedule.alpha_from_gamma(gamma_T), NoiseSchedule.sigma_from_gamma(gamma_T)
    n = torch.bincount(batch, minlength=num_graphs).to(pos.dtype)
    mu2_h = scatter_sum((a_T * h) ** 2, batch, num_graphs).sum(1)
    kl_h = n * h.shape[1] * (-torch.log(s_T) + 0.5 * s_T**2 - 0.5) + 0.5 * mu2_h
    d = (n - 1) * 3
    mu2_x = scatter_sum((a_T * pos) ** 2, batch, num_graphs).sum(1)
    kl_x = d * (-torch.log(s_T)) + 0.5 * (d * s_T**2 + mu2_x) - 0.5 * d
    return kl_x + kl_h


def log_constants_p_x_given_z0(
    process: EquivariantDiffusion, batch: torch.Tensor, num_graphs: int, dtype: torch.dtype
) -> torch.Tensor:
    """Normalisation constant of the Gaussian ``p(x | z_0)`` on the zero-CoM subspace, ``[B]``.

    ``3 (n - 1) (-log sigma_0 - log(2 pi) / 2)`` per molecule of ``n`` atoms.

    >>> from moldiff.diffusion.process import EquivariantDiffusion
    >>> from moldiff.nn.denoiser import EGNNDenoiser
    >>> proc = EquivariantDiffusion(EGNNDenoiser(6, hidden_nf=8, n_layers=1), NoiseSchedule(), 5)
    >>> log_constants_p_x_given_z0(proc, torch.tensor([0, 1, 1]), 2, torch.float64)[0].item()  # one atom
    0.0
    """
    n = torch.bincount(batch, minlength=num_graphs).to(dtype)
    gamma_0 = process.schedule.gamma(torch.zeros(1, device=batch.device))
    log_sigma_x = 0.5 * gamma_0
    return (n - 1) * 3 * (-log_sigma_x - 0.5 * math.log(2 * math.pi))


def log_pxh_given_z0_without_constants(
    process: EquivariantDiffusion,
    h: torch.Tensor,
    z_h: torch.Tensor,
    error_x: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
    atom_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log p(x, h | z_0)`` up to constants: Gaussian on x, discretised Gaussians on types/charges.

    Args:
        process: the diffusion process (vocabulary size, charge channel, ``norm_values``, ``sigma_0``).
        h: ``[N, F]`` normalised clean features.
        z_h: ``[N, F]`` features of ``z_0``.
        error_x: ``[B]`` per-molecule squared position-noise error (the Gaussian term is ``-error_x / 2``).
        batch: ``[N]`` molecule index.
        num_graphs: ``B``.
        atom_weight: optional ``[N]`` per-atom weights of the type/charge terms (0 for fixed atoms).

    Returns:
        ``[B]`` log-likelihood without the Gaussian constants (:func:`log_constants_p_x_given_z0`).
    """
    sigma0 = NoiseSchedule.sigma_from_gamma(process.schedule.gamma(torch.zeros(1, device=h.device)))
    k = process.num_classes
    onehot = h[:, :k] * process.norm_values[1]
    est_cat = z_h[:, :k] * process.norm_values[1]
    s_cat = sigma0 * process.norm_values[1]
    centred = est_cat - 1
    log_p_cat = torch.log(_cdf((centred + 0.5) / s_cat) - _cdf((centred - 0.5) / s_cat) + _EPS)
    log_p_cat = log_p_cat - torch.logsumexp(log_p_cat, dim=1, keepdim=True)
    per_atom = (log_p_cat * onehot).sum(1)
    if process.include_charges:
        charge = torch.round(h[:, k:] * process.norm_values[2])
        est = z_h[:, k:] * process.norm_values[2]
        s_int = sigma0 * process.norm_values[2]
        c = charge - est
        per_atom = per_atom + torch.log(_cdf((c + 0.5) / s_int) - _cdf((c - 0.5) / s_int) + _EPS).sum(1)
    if atom_weight is not None:
        per_atom = per_atom * atom_weight
    log_p_h = scatter_sum(per_atom, batch, num_graphs)
    return -0.5 * error_x + log_p_h


@torch.no_grad()
def nll(process: EquivariantDiffusion, mol: MolBatch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased variational bound ``-log p(x, h | N)`` per molecule (two network calls).

    Uses ``t ~ U{1..T}`` weighted by ``T (SNR(s) / SNR(t) - 1) / 2`` plus an exact ``L_0`` term,
    the prior KL and the Gaussian constants (EDM's ``t0_always=True`` estimator). Add
    ``-log p(N)`` for the full NLL. Categorical atom types have no bound (yet): ``NaN``.

    Args:
        process: the diffusion process.
        mol: data batch.
        generator: RNG for ``t`` and the noise.

    Returns:
        ``[B]`` bound in nats.
    """
    pos, h = process.normalize(mol)
    B, batch, T = mol.num_graphs, mol.batch, process.timesteps
    if process.categorical_types:  # no bound for the mixed continuous/discrete model (yet)
        return torch.full((B,), float("nan"), dtype=pos.dtype, device=pos.device)
    dev = pos.device
    t_int = torch.randint(1, T + 1, (B,), generator=generator).to(dev)
    t, s = t_int.to(pos.dtype) / T, (t_int - 1).to(pos.dtype) / T
    gamma_t, gamma_s = process.schedule.gamma(t), process.schedule.gamma(s)
    eps_pos, eps_h = process.sample_noise(batch, B, pos.dtype, generator)
    z_pos, z_h = process.q_sample(pos, h, gamma_t, batch, eps_pos, eps_h)
    pred_pos, pred_h = process.denoise(z_pos, z_h, t, batch, mol.context)
    err = scatter_sum(((eps_pos - pred_pos) ** 2).sum(1) + ((eps_h - pred_h) ** 2).sum(1), batch, B)
    loss_t = T * 0.5 * (torch.exp(-(gamma_s - gamma_t)) - 1.0) * err
    # exact L_0 term at t = 0
    t0 = torch.zeros(B, dtype=pos.dtype, device=dev)
    gamma_0 = process.schedule.gamma(t0)
    eps_pos0, eps_h0 = process.sample_noise(batch, B, pos.dtype, generator)
    z_pos0, z_h0 = process.q_sample(pos, h, gamma_0, batch, eps_pos0, eps_h0)
    pred_pos0, _ = process.denoise(z_pos0, z_h0, t0, batch, mol.context)
    err_x0 = scatter_sum(((eps_pos0 - pred_pos0) ** 2).sum(1), batch, B)
    loss_0 = -process.log_pxh_given_z0_without_constants(h, z_h0, err_x0, batch, B)
    neg_log_const = -process.log_constants_p_x_given_z0(batch, B, pos.dtype)
    return loss_t + loss_0 + neg_log_const + process.kl_prior(pos, h, batch, B)
