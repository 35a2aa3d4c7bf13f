"""Training losses of :class:`~moldiff.diffusion.process.EquivariantDiffusion`, per molecule.

This module owns the training objectives and their per-molecule result :class:`LossOutput`:
EDM's noise-error objective (L2 or VLB weighting, with the discretised ``L_0`` term at ``t = 0``),
the weighted clean-molecule error of a non-EDM :class:`~moldiff.diffusion.parameterization.LossWeighting`,
and the mixed loss of categorical atom types (positions + type and bond cross-entropies). Fixed
atoms (fragment training) are masked out of every path the same way.

The functions take the process as their first argument and use its forward process, network call
and likelihood terms; ``EquivariantDiffusion.loss`` delegates to :func:`training_loss`. The
variational bound used as NLL lives in :mod:`moldiff.diffusion.likelihood`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moldiff.geometry import molecule_pairs, pair_classes, scatter_sum
from moldiff.types import MolBatch

if TYPE_CHECKING:
    from moldiff.diffusion.process import EquivariantDiffusion

#: ``(eps_pos [N, 3], x [N, 3], batch [N], num_graphs) -> eps_pos``: a noise-to-data alignment for training.
NoiseAlign = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class LossOutput:
    """Per-molecule loss terms (``[B]`` each); ``loss`` is what training minimises."""

    loss: torch.Tensor
    error_t: torch.Tensor
    kl_prior: torch.Tensor
    t_int: torch.Tensor


def _atom_sum(values: torch.Tensor, index: torch.Tensor, num_graphs: int, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-molecule sum of per-atom (or per-pair) ``values``, each times ``weight`` when given (0: fixed)."""
    return scatter_sum(values if weight is None else values * weight, index, num_graphs)


def training_loss(
    process: EquivariantDiffusion,
    mol: MolBatch,
    generator: torch.Generator | None = None,
    t_int: torch.Tensor | None = None,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    noise_align: NoiseAlign | None = None,
    fixed: torch.Tensor | None = None,
) -> LossOutput:
    """EDM's training objective (one network call), per molecule.

    ``t`` is drawn from ``{0, ..., T}`` by ``process.time_sampler`` (uniformly by default); at
    ``t = 0`` the discretised ``L_0`` term is used. With ``loss_type="l2"`` the squared error is
    divided by ``(3 + F) * max_n_atoms`` as in EDM (padded formulation), and the VLB weighting is
    dropped. A non-EDM weighting goes to :func:`x0_loss`, categorical types to :func:`categorical_loss`.

    Args:
        process: the diffusion process (its mode, ``process.training``, selects EDM's L2 scaling).
        mol: data batch.
        generator: RNG for ``t`` and the noise.
        t_int: optional fixed ``[B]`` integer steps.
        noise: optional fixed ``(eps_pos, eps_h)``.
        noise_align: optional ``(eps_pos, x, batch, num_graphs) -> eps_pos`` applied to the
            position noise (drawn or given) before ``z_t`` is formed, ``x`` being the normalised
            zero-CoM data: the trainer's ``train.align_noise``
            (:func:`moldiff.geometry.noise_aligner`: Kabsch rotation and/or Hungarian
            permutation of the noise onto the molecule). ``None``: independent noise (EDM).
        fixed: optional ``[N]`` bool, atoms held fixed (fragment training, DiffLinker-style):
            ``z_t`` is formed for every atom as usual, then the fixed rows get the clean fragment
            translated to the centre of mass of their noisy rows (``process.place_fixed``; the
            molecule's centre of mass is unchanged), their clean types and, with a bond channel,
            the clean classes of the pairs among them; the denoiser reads the flag
            (``fragment_input``) and the loss counts the free atoms (and pairs with a free atom)
            only, with the same normalisation. ``None``: no fixed atoms (bit-identical to before).

    Returns:
        :class:`LossOutput` with ``[B]`` tensors.

    >>> from moldiff.diffusion.process import EquivariantDiffusion
    >>> from moldiff.diffusion.schedules import NoiseSchedule
    >>> from moldiff.nn.denoiser import EGNNDenoiser
    >>> proc = EquivariantDiffusion(EGNNDenoiser(6, hidden_nf=8, n_layers=1), NoiseSchedule(), 5)
    >>> types = torch.tensor([1, 0, 0, 2])
    >>> mol = MolBatch(pos=torch.randn(4, 3), one_hot=torch.nn.functional.one_hot(types, 5).float(),
    ...                atomic_numbers=torch.tensor([[6.0], [1.0], [1.0], [7.0]]),
    ...                batch=torch.tensor([0, 0, 1, 1]), num_graphs=2)
    >>> out = training_loss(proc, mol)
    >>> out.loss.shape, out.t_int.shape
    (torch.Size([2]), torch.Size([2]))
    """
    pos, h = process.normalize(mol)
    B, batch, T = mol.num_graphs, mol.batch, process.timesteps
    dev = pos.device
    if t_int is None:
        t_int = process.time_sampler.sample(B, T, generator, dev)
    t = t_int.to(pos.dtype) / T
    s = (t_int - 1).clamp(min=0).to(pos.dtype) / T
    gamma_t, gamma_s = process.schedule.gamma(t), process.schedule.gamma(s)
    eps_pos, eps_h = noise if noise is not None else process.sample_noise(batch, B, pos.dtype, generator)
    if noise_align is not None:
        eps_pos = noise_align(eps_pos, pos, batch, B)
    free = None if fixed is None else (~fixed).to(pos.dtype)  # per-atom loss weight
    if process.categorical_types:
        return categorical_loss(process, mol, pos, eps_pos, t, gamma_t, t_int, generator, fixed)
    z_pos, z_h = process.q_sample(pos, h, gamma_t, batch, eps_pos, eps_h)
    if fixed is not None:  # the fragment enters clean
        z_pos = process.place_fixed(z_pos, pos, fixed, batch, B)
        z_h = torch.where(fixed.unsqueeze(1), h, z_h)
    if not process.weighting.on_eps:
        return x0_loss(process, mol, pos, h, z_pos, z_h, t, gamma_t, t_int, generator, fixed)
    sc = process._train_self_cond(z_pos, z_h, t, batch, mol.context, generator, fixed=fixed)
    pred_pos, pred_h = process.denoise(z_pos, z_h, t, batch, mol.context, self_cond=sc, fixed=fixed)
    err_x = _atom_sum(((eps_pos - pred_pos) ** 2).sum(1), batch, B, free)
    err_h = _atom_sum(((eps_h - pred_h) ** 2).sum(1), batch, B, free)
    error = err_x + err_h
    if process.training and process.loss_type == "l2":
        denom = (3 + process.feature_dim) * int(torch.bincount(batch, minlength=B).max())
        error, err_x = error / denom, err_x / denom
        weight = torch.ones_like(error)
    else:
        weight = torch.exp(-(gamma_s - gamma_t)) - 1.0
    loss_t = 0.5 * weight * error
    loss_0 = -process.log_pxh_given_z0_without_constants(h, z_h, err_x, batch, B, free)
    is_zero = (t_int == 0).to(pos.dtype)
    loss_t = is_zero * loss_0 + (1 - is_zero) * loss_t
    if not (process.training and process.loss_type == "l2"):
        loss_t = T * loss_t
    kl = process.kl_prior(pos, h, batch, B)
    return LossOutput(loss=loss_t + kl, error_t=error, kl_prior=kl, t_int=t_int)


def x0_loss(
    process: EquivariantDiffusion,
    mol: MolBatch,
    pos: torch.Tensor,
    h: torch.Tensor,
    z_pos: torch.Tensor,
    z_h: torch.Tensor,
    t: torch.Tensor,
    gamma_t: torch.Tensor,
    t_int: torch.Tensor,
    generator: torch.Generator | None = None,
    fixed: torch.Tensor | None = None,
) -> LossOutput:
    """``0.5 w(SNR_t) |x - x0_hat|^2 / ((3 + F) max_n)`` per molecule (EDM's normalisation).

    Args:
        process: the diffusion process (its ``weighting`` gives ``w``).
        mol: data batch.
        pos: ``[N, 3]`` normalised clean positions.
        h: ``[N, F]`` normalised clean features.
        z_pos: ``[N, 3]`` noisy positions at ``t`` (fixed rows already placed).
        z_h: ``[N, F]`` noisy features at ``t``.
        t: ``[B]`` normalised time.
        gamma_t: ``[B]`` ``gamma(t)``.
        t_int: ``[B]`` integer steps (returned in the output).
        generator: RNG of the self-conditioning draw.
        fixed: optional ``[N]`` bool, atoms left out of the error.
    """
    B, batch = mol.num_graphs, mol.batch
    free = None if fixed is None else (~fixed).to(pos.dtype)
    sc = process._train_self_cond(z_pos, z_h, t, batch, mol.context, generator, fixed=fixed)
    x0_pos, x0_h = process.predict_x0(z_pos, z_h, t, batch, mol.context, self_cond=sc, fixed=fixed)
    err = _atom_sum(((pos - x0_pos) ** 2).sum(1) + ((h - x0_h) ** 2).sum(1), batch, B, free)
    weight = process.weighting.x0_weight(torch.exp(-gamma_t))
    denom = (3 + process.feature_dim) * int(torch.bincount(batch, minlength=B).max())
    loss = 0.5 * weight * err / denom
    zero = torch.zeros_like(loss)
    return LossOutput(loss=loss, error_t=err, kl_prior=zero, t_int=t_int)


def categorical_loss(
    process: EquivariantDiffusion,
    mol: MolBatch,
    pos: torch.Tensor,
    eps_pos: torch.Tensor,
    t: torch.Tensor,
    gamma_t: torch.Tensor,
    t_int: torch.Tensor,
    generator: torch.Generator | None,
    fixed: torch.Tensor | None = None,
) -> LossOutput:
    """Positions as configured (EDM's ``eps`` L2 or the weighted ``x0`` error) + type cross-entropy.

    With a bond channel, the bond cross-entropy averaged over each molecule's pairs is added,
    weighted by ``process.bond_loss_weight``.

    Args:
        process: the diffusion process, with a categorical ``type_process``.
        mol: data batch (with ``bond_index`` / ``bond_type`` when the process has a bond channel).
        pos: ``[N, 3]`` normalised clean positions.
        eps_pos: ``[N, 3]`` position noise.
        t: ``[B]`` normalised time.
        gamma_t: ``[B]`` ``gamma(t)``.
        t_int: ``[B]`` integer steps (returned in the output).
        generator: RNG for the categorical draws and the self-conditioning draw.
        fixed: optional ``[N]`` bool, atoms given clean and left out of the loss.
    """
    B, batch = mol.num_graphs, mol.batch
    free = None if fixed is None else (~fixed).to(pos.dtype)
    alpha, sigma = process._alpha_sigma_atoms(t, batch, gamma_t)
    z_pos = alpha * pos + sigma * eps_pos
    x0_types = mol.one_hot.to(pos.dtype)
    x_t = process.type_process.q_sample(x0_types, t[batch], generator=generator).to(pos.dtype)
    if fixed is not None:  # the fragment enters clean (the draws above are made all the same)
        z_pos = process.place_fixed(z_pos, pos, fixed, batch, B)
        x_t = torch.where(fixed.unsqueeze(1), x0_types, x_t)
    h_t = x_t / process.norm_values[1]
    bonds_t = pairs = x0_bonds = None
    if process.has_bonds:
        if mol.bond_index is None:
            raise ValueError(
                "a model with a bond channel needs training data with bonds (an SDF or SMILES "
                "dataset, or QM9 after `moldiff data prepare`, which derives them)"
            )
        pairs = molecule_pairs(batch)
        classes = pair_classes(pairs, mol.bond_index, mol.bond_type, batch.shape[0])
        x0_bonds = torch.nn.functional.one_hot(classes, process.bond_process.num_classes).to(pos.dtype)
        bonds_t = process.bond_process.q_sample(x0_bonds, t[batch[pairs[0]]], generator=generator).to(pos.dtype)
        if fixed is not None:  # pairs among fixed atoms: their clean class
            bonds_t = torch.where((fixed[pairs[0]] & fixed[pairs[1]]).unsqueeze(1), x0_bonds, bonds_t)
    sc = process._train_self_cond(z_pos, h_t, t, batch, mol.context, generator, bonds_t, fixed)
    out = process._net(z_pos, h_t, t, batch, mol.context, sc, bonds_t, fixed)
    out_pos, logits = out[0], out[1]
    max_n = int(torch.bincount(batch, minlength=B).max())
    if process.weighting.on_eps:
        eps_hat = process.parameterization.to_eps((out_pos, x_t), (z_pos, x_t), alpha, sigma)[0]
        err = _atom_sum(((eps_pos - eps_hat) ** 2).sum(1), batch, B, free)
        pos_loss = 0.5 * err / (3 * max_n)
    else:
        x0_hat = process.parameterization.to_x0((out_pos, x_t), (z_pos, x_t), alpha, sigma)[0]
        err = _atom_sum(((pos - x0_hat) ** 2).sum(1), batch, B, free)
        pos_loss = 0.5 * process.weighting.x0_weight(torch.exp(-gamma_t)) * err / max_n
    ce = _atom_sum(process.type_process.loss(logits, x0_types, t[batch]), batch, B, free)
    loss = pos_loss + process.type_loss_weight * ce / max_n
    if process.has_bonds:
        pair_mol = batch[pairs[0]]
        free_pair = None if fixed is None else (~(fixed[pairs[0]] & fixed[pairs[1]])).to(loss.dtype)
        bond_ce = _atom_sum(process.bond_process.loss(out[2], x0_bonds, t[pair_mol]), pair_mol, B, free_pair)
        n_pairs = torch.bincount(pair_mol, minlength=B).clamp(min=1).to(loss.dtype)
        loss = loss + process.bond_loss_weight * bond_ce / n_pairs
    return LossOutput(loss=loss, error_t=err, kl_prior=torch.zeros_like(loss), t_int=t_int)
