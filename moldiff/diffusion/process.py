"""E(3)-equivariant variational diffusion (EDM, Hoogeboom et al. 2022) on sparse molecule batches.

The process owns its construction and normalisation, the network call (:meth:`denoise`, clean
estimates, self-conditioning), the forward noising ``q(z_t | x)``, one reverse step ``p(z_s | z_t)``
and the final ``p(x, h | z_0)``. The training losses live in :mod:`moldiff.diffusion.losses` and the
variational-bound terms in :mod:`moldiff.diffusion.likelihood`, as functions of the process; the
same-named methods here delegate to them. It receives any :class:`moldiff.types.Denoiser`; it never
imports ``moldiff.nn``.

State layout: positions ``pos [N, 3]`` (zero centre of mass per molecule) and features
``h [N, K + c]`` = ``[one_hot / norm_values[1], charges / norm_values[2]]`` (``c`` = 1 with
charges, 0 without).
"""

from __future__ import annotations

import torch
from torch import nn

from moldiff.diffusion import likelihood, losses
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.losses import LossOutput, NoiseAlign
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.diffusion.time_sampling import TimeSampler
from moldiff.geometry import molecule_pairs, remove_mean, sample_zero_com_gaussian, scatter_sum
from moldiff.types import Denoiser, MolBatch

__all__ = ["EquivariantDiffusion", "LossOutput", "NoiseAlign"]


class EquivariantDiffusion(nn.Module):
    """EDM's E(n) variational diffusion model around a denoiser.

    Args:
        denoiser: any module implementing :class:`moldiff.types.Denoiser`.
        schedule: the noise schedule (holds ``T``).
        num_classes: number of atom types ``K``.
        include_charges: whether ``h`` carries EDM's integer (atomic number) channel.
        norm_values: ``(pos, one_hot, charges)`` scale factors (EDM QM9: ``(1, 4, 10)``).
        loss_type: ``"l2"`` (EDM's QM9 training objective) or ``"vlb"``.
        parameterization: what the denoiser predicts (:class:`Parameterization` or its name; EDM:
            ``"eps"``). :meth:`denoise` always returns a noise prediction, so samplers and the
            variational bound work unchanged for every parameterization.
        weighting: the training loss weighting (:class:`LossWeighting`; default EDM's). A
            non-EDM weighting trains on the ``x0`` error weighted by ``clamp(SNR_t, lo, hi)`` at
            every ``t`` (no separate ``L_0`` term) and ignores ``loss_type``.
        type_process: ``None`` (EDM: atom types are a continuous one-hot diffused with the
            positions) or a :class:`~moldiff.diffusion.categorical.CategoricalDiffusion`: atom types
            are then discrete labels, noised by marginal transitions; the network reads the noisy
            one-hot (scaled by ``1 / norm_values[1]``) and its feature output is read as the logits
            of the clean type, trained with cross-entropy. Needs ``include_charges=False``.
        type_loss_weight: weight of the per-atom type cross-entropy against the per-atom position
            error (EQGAT-diff's ratio 0.4 : 1 by default).
        bond_process: ``None`` (no bonds: they are inferred from the coordinates afterwards) or a
            :class:`~moldiff.diffusion.categorical.CategoricalDiffusion` over bond classes (0 = no
            bond, then the codes of ``moldiff.constants.BOND_ORDERS``): every atom pair of a
            molecule (:func:`moldiff.geometry.molecule_pairs`) carries one class, noised with the
            same clock as the types; the denoiser reads the noisy classes and returns clean-bond
            logits (EQGAT-diff / MiDi). Needs categorical atom types and training data with bonds.
        bond_loss_weight: weight of the bond cross-entropy, averaged over a molecule's pairs
            (EQGAT-diff weighs its per-edge mean bond loss 2.0 against a per-atom mean type loss
            of 0.4; the same ratio as ``type_loss_weight`` by default).
        time_sampler: how :meth:`loss` draws ``t`` when none is given
            (:class:`~moldiff.diffusion.time_sampling.TimeSampler`; ``None``: uniform, EDM's,
            bit-identical to before). The loss is not re-weighted; :meth:`nll` always draws uniformly.

    >>> from moldiff.nn.denoiser import EGNNDenoiser
    >>> proc = EquivariantDiffusion(EGNNDenoiser(6, hidden_nf=8, n_layers=1), NoiseSchedule(), 5)
    >>> proc.timesteps
    1000
    """

    def __init__(
        self, denoiser: Denoiser, schedule: NoiseSchedule, num_classes: int, include_charges: bool = True,
        norm_values: tuple[float, float, float] = (1.0, 4.0, 10.0), loss_type: str = "l2",
        parameterization: Parameterization | str = "eps", weighting: LossWeighting | None = None,
        type_process: CategoricalDiffusion | None = None, type_loss_weight: float = 0.4,
        bond_process: CategoricalDiffusion | None = None, bond_loss_weight: float = 2.0,
        time_sampler: TimeSampler | None = None,
    ) -> None:
        super().__init__()
        if loss_type not in ("l2", "vlb"):
            raise ValueError(f"loss_type must be 'l2' or 'vlb', got {loss_type!r}")
        self.denoiser = denoiser
        self.schedule = schedule
        self.num_classes = num_classes
        self.include_charges = include_charges
        self.norm_values = tuple(float(v) for v in norm_values)
        self.loss_type = loss_type
        self.parameterization = (
            parameterization if isinstance(parameterization, Parameterization) else Parameterization(parameterization)
        )
        self.weighting = weighting if weighting is not None else LossWeighting()
        if type_process is not None:
            if include_charges:
                raise ValueError("categorical atom types carry no charge channel: use include_charges=False")
            if type_process.num_classes != num_classes:
                raise ValueError(f"type_process has {type_process.num_classes} classes, the model {num_classes}")
        self.type_process = type_process
        self.type_loss_weight = float(type_loss_weight)
        if bond_process is not None and type_process is None:
            raise ValueError("a bond channel needs categorical atom types (atom_types: categorical)")
        net_bonds = int(getattr(getattr(denoiser, "module", denoiser), "bond_classes", 0))
        if (bond_process.num_classes if bond_process is not None else 0) != net_bonds:
            raise ValueError(f"the denoiser reads {net_bonds} bond classes, the bond process has "
                             f"{0 if bond_process is None else bond_process.num_classes}")
        self.bond_process = bond_process
        self.bond_loss_weight = float(bond_loss_weight)
        self.time_sampler = time_sampler if time_sampler is not None else TimeSampler()
        self._check_norm_values()

    @property
    def timesteps(self) -> int:
        """``T``, the number of diffusion steps."""
        return self.schedule.timesteps

    @property
    def categorical_types(self) -> bool:
        """Whether atom types are diffused as discrete labels (see ``type_process``)."""
        return self.type_process is not None

    @property
    def has_bonds(self) -> bool:
        """Whether bond classes of every atom pair are diffused with the molecule (see ``bond_process``)."""
        return self.bond_process is not None

    @property
    def feature_dim(self) -> int:
        """Width of ``h``."""
        return self.num_classes + int(self.include_charges)

    def _check_norm_values(self, num_stdevs: float = 8.0) -> None:
        sigma0 = float(self.schedule.sigma(torch.zeros(1)))
        max_norm = max(self.norm_values[1], self.norm_values[2] if self.include_charges else 0.0)
        if sigma0 * num_stdevs > 1.0 / max_norm:
            raise ValueError(f"norm value {max_norm} too large for sigma_0 = {sigma0:.5f}")

    # ------------------------------------------------------------------ (un)normalisation
    def normalize(self, mol: MolBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Map a data batch to the diffusion state ``(pos, h)``."""
        pos = remove_mean(mol.pos, mol.batch, mol.num_graphs) / self.norm_values[0]
        parts = [mol.one_hot.to(pos.dtype) / self.norm_values[1]]
        if self.include_charges:
            parts.append(mol.charges.to(pos.dtype) / self.norm_values[2])
        return pos, torch.cat(parts, dim=1)

    @property
    def self_conditioning(self) -> bool:
        """Whether the denoiser reads a previous clean-molecule estimate (``self_cond``)."""
        net = getattr(self.denoiser, "module", self.denoiser)  # through a DDP wrapper
        return bool(getattr(net, "self_condition", False))

    @property
    def fragment_input(self) -> bool:
        """Whether the denoiser reads a per-atom fixed-atom flag (``fixed``; trained for fragments)."""
        net = getattr(self.denoiser, "module", self.denoiser)  # through a DDP wrapper
        return bool(getattr(net, "fragment_input", False))

    def _net(self, pos: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor,
             context: torch.Tensor | None, self_cond: tuple[torch.Tensor, torch.Tensor] | None,
             bonds: torch.Tensor | None = None, fixed: torch.Tensor | None = None) -> tuple:
        kw = {}
        if self.self_conditioning:
            kw["self_cond"] = self_cond
        if self.fragment_input:  # None: no fixed atom (the denoiser reads zeros)
            kw["fixed"] = fixed
        if self.has_bonds:
            if bonds is None:
                raise ValueError("this model has a bond channel: pass the current bond classes (bonds=)")
            kw["bonds"] = bonds
        return self.denoiser(pos, h, t, batch, context, **kw)

    def denoise(
        self, pos: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor,
        context: torch.Tensor | None = None, self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
        bonds: torch.Tensor | None = None, fixed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Call the denoiser: ``t [B]`` normalised time -> noise prediction ``(eps_pos, eps_h)``.

        With categorical atom types the second element is the clean-type logits. ``self_cond``: the
        previous clean estimate (:meth:`x0_from_eps`) for a self-conditioned denoiser. With a bond
        channel, ``bonds [P, K_b]`` are the current one-hot pair classes and the clean-bond logits
        ``[P, K_b]`` come back third. ``fixed [N]`` bool: the atoms given clean (a fragment), read
        by a denoiser with ``fragment_input`` (ignored otherwise; ``None``: none fixed).
        """
        out = self._net(pos, h, t, batch, context, self_cond, bonds, fixed)
        if self.parameterization.name == "eps":
            return out
        alpha, sigma = self._alpha_sigma_atoms(t, batch)
        if self.categorical_types:  # the feature output holds type logits: only positions convert
            return (self.parameterization.to_eps((out[0], h), (pos, h), alpha, sigma)[0], *out[1:])
        return self.parameterization.to_eps(out, (pos, h), alpha, sigma)

    def predict_x0(
        self, pos: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor,
        context: torch.Tensor | None = None, self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
        fixed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean-molecule prediction ``(x0_pos, x0_h)`` in the normalised diffusion space."""
        out = self._net(pos, h, t, batch, context, self_cond, fixed=fixed)
        alpha, sigma = self._alpha_sigma_atoms(t, batch)
        return self.parameterization.to_x0(out, (pos, h), alpha, sigma)

    def x0_from_eps(
        self, pos: torch.Tensor, h: torch.Tensor, eps: tuple[torch.Tensor, torch.Tensor], t: torch.Tensor,
        batch: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean estimate from a :meth:`denoise` output (types: softmax of the logits when categorical)."""
        alpha, sigma = self._alpha_sigma_atoms(t, batch)
        x0_pos = (pos - sigma * eps[0]) / alpha
        if self.categorical_types:
            return x0_pos, torch.softmax(eps[1], dim=1) / self.norm_values[1]
        return x0_pos, (h - sigma * eps[1]) / alpha

    def _train_self_cond(
        self, pos: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor, context: torch.Tensor | None,
        generator: torch.Generator | None, bonds: torch.Tensor | None = None, fixed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Self-conditioning in training: half of the batches get the network's own (detached) estimate."""
        if not self.self_conditioning or float(torch.rand((), generator=generator)) < 0.5:
            return None
        with torch.no_grad():
            eps = self.denoise(pos, h, t, batch, context, bonds=bonds, fixed=fixed)
            return tuple(x.detach() for x in self.x0_from_eps(pos, h, eps, t, batch))

    def _alpha_sigma_atoms(self, t: torch.Tensor, batch: torch.Tensor,
                           gamma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom ``(alpha_t, sigma_t)`` columns ``[N, 1]`` (``gamma``: ``gamma_t [B]`` when already known)."""
        gamma = self.schedule.gamma(t) if gamma is None else gamma
        alpha = NoiseSchedule.alpha_from_gamma(gamma)[batch].unsqueeze(1)
        sigma = NoiseSchedule.sigma_from_gamma(gamma)[batch].unsqueeze(1)
        return alpha, sigma

    # ------------------------------------------------------------------ forward process
    def sample_noise(
        self, batch: torch.Tensor, num_graphs: int, dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard noise: zero-CoM Gaussian for positions, Gaussian for features."""
        eps_pos = sample_zero_com_gaussian(batch, num_graphs, generator, dtype)
        eps_h = torch.randn(batch.shape[0], self.feature_dim, generator=generator, dtype=dtype).to(batch.device)
        return eps_pos, eps_h

    def q_sample(
        self, pos: torch.Tensor, h: torch.Tensor, gamma_t: torch.Tensor, batch: torch.Tensor,
        eps_pos: torch.Tensor, eps_h: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_t = alpha_t x + sigma_t eps`` with per-molecule ``gamma_t [B]``."""
        a = NoiseSchedule.alpha_from_gamma(gamma_t)[batch].unsqueeze(1)
        s = NoiseSchedule.sigma_from_gamma(gamma_t)[batch].unsqueeze(1)
        return a * pos + s * eps_pos, a * h + s * eps_h

    @staticmethod
    def place_fixed(z_pos: torch.Tensor, pos: torch.Tensor, fixed: torch.Tensor, batch: torch.Tensor,
                    num_graphs: int) -> torch.Tensor:
        """Fixed rows of ``z_pos`` <- the clean ``pos`` rows, translated to the centre of mass of the noisy ones.

        ``z[F] = x[F] - mean_F(x) + mean_F(z)`` per molecule: the fragment enters clean, the sum over
        the fixed rows (hence every molecule's centre of mass) is unchanged. This is inpainting's
        replacement (:mod:`moldiff.sampling.inpaint`) with zero noise, so training matches sampling.

        Args:
            z_pos: ``[N, 3]`` noisy positions.
            pos: ``[N, 3]`` clean positions (same frame).
            fixed: ``[N]`` bool, the fixed atoms.
            batch: ``[N]`` molecule index.
            num_graphs: ``B``.

        >>> z = EquivariantDiffusion.place_fixed(torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [-4.0, 0, 0]]),
        ...     torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]]), torch.tensor([True, True, False]),
        ...     torch.zeros(3, dtype=torch.long), 1)
        >>> z[:, 0].tolist()
        [1.5, 2.5, -4.0]
        """
        w = fixed.to(z_pos.dtype).unsqueeze(1)
        count = scatter_sum(w, batch, num_graphs).clamp(min=1.0)
        shift = (scatter_sum(w * z_pos, batch, num_graphs) - scatter_sum(w * pos, batch, num_graphs)) / count
        return torch.where(fixed.unsqueeze(1), pos + shift[batch], z_pos)

    # ------------------------------------------------------------------ likelihood terms (likelihood.py)
    def kl_prior(self, pos: torch.Tensor, h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """``KL(q(z_T | x) || N(0, I))`` per molecule, ``[B]`` (:mod:`~moldiff.diffusion.likelihood`)."""
        return likelihood.kl_prior(self, pos, h, batch, num_graphs)

    def log_constants_p_x_given_z0(self, batch: torch.Tensor, num_graphs: int, dtype: torch.dtype) -> torch.Tensor:
        """Normalisation constant of the Gaussian ``p(x | z_0)``, ``[B]`` (:mod:`~moldiff.diffusion.likelihood`)."""
        return likelihood.log_constants_p_x_given_z0(self, batch, num_graphs, dtype)

    def log_pxh_given_z0_without_constants(
        self, h: torch.Tensor, z_h: torch.Tensor, error_x: torch.Tensor, batch: torch.Tensor, num_graphs: int,
        atom_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(x, h | z_0)`` up to constants, ``[B]`` (:mod:`~moldiff.diffusion.likelihood`)."""
        return likelihood.log_pxh_given_z0_without_constants(self, h, z_h, error_x, batch, num_graphs, atom_weight)

    def nll(self, mol: MolBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unbiased variational bound ``-log p(x, h | N)``, ``[B]`` (:mod:`~moldiff.diffusion.likelihood`)."""
        return likelihood.nll(self, mol, generator)

    # ------------------------------------------------------------------ objectives (losses.py)
    def loss(
        self, mol: MolBatch, generator: torch.Generator | None = None, t_int: torch.Tensor | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None, noise_align: NoiseAlign | None = None,
        fixed: torch.Tensor | None = None,
    ) -> LossOutput:
        """The training objective, per molecule: :func:`moldiff.diffusion.losses.training_loss`.

        EDM's noise error (L2 or VLB, ``L_0`` at ``t = 0``), the weighted ``x0`` error of a non-EDM
        ``weighting``, or positions + type (+ bond) cross-entropy with categorical types. ``t_int``
        / ``noise``: optional fixed ``[B]`` steps / ``(eps_pos, eps_h)``; ``noise_align``: the
        trainer's noise-to-data alignment; ``fixed [N]`` bool: atoms held fixed (fragment training).
        """
        return losses.training_loss(self, mol, generator, t_int, noise, noise_align, fixed)

    # ------------------------------------------------------------------ reverse process
    def reverse_types(
        self, x_t: torch.Tensor, logits: torch.Tensor, t: torch.Tensor, s: torch.Tensor, batch: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Categorical types: ``x_s ~ p(x_s | x_t)`` from the network's clean-type logits (one-hot ``[N, K]``)."""
        if not self.categorical_types:
            raise ValueError("reverse_types needs a categorical type process")
        return self.type_process.reverse_sample(x_t, logits, t[batch], s[batch], generator=generator).to(logits.dtype)

    def reverse_bonds(
        self, b_t: torch.Tensor, logits: torch.Tensor, t: torch.Tensor, s: torch.Tensor, batch: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Bond channel: ``b_s ~ p(b_s | b_t)`` for every pair from the clean-bond logits (one-hot ``[P, K_b]``)."""
        if not self.has_bonds:
            raise ValueError("reverse_bonds needs a bond process")
        pair_mol = batch[molecule_pairs(batch)[0]]
        return self.bond_process.reverse_sample(b_t, logits, t[pair_mol], s[pair_mol],
                                                generator=generator).to(logits.dtype)

    def p_zs_given_zt(
        self, z_pos: torch.Tensor, z_h: torch.Tensor, t: torch.Tensor, s: torch.Tensor, batch: torch.Tensor,
        num_graphs: int, context: torch.Tensor | None = None, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        generator: torch.Generator | None = None, eps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step ``z_s ~ p(z_s | z_t)`` for any ``s < t`` (``[B]`` normalised times).

        ``mu = z_t / alpha_t|s - sigma2_t|s / (alpha_t|s sigma_t) eps_hat``,
        ``std = sigma_t|s sigma_s / sigma_t``. Positions are re-centred after the step.

        Args:
            z_pos: ``[N, 3]`` noisy positions at time ``t``.
            z_h: ``[N, F]`` noisy features at time ``t``.
            t: ``[B]`` current normalised time.
            s: ``[B]`` target normalised time (``s < t``).
            batch: ``[N]`` molecule index of every atom.
            num_graphs: ``B``.
            context: ``[B, C]`` conditioning or ``None``.
            noise: optional fixed ``(noise_pos, noise_h)`` (EDM's ``fix_noise``; used by tests).
            generator: RNG for the noise when ``noise`` is not given.
            eps: optional precomputed network output (e.g. classifier-free guided).
        """
        gamma_t, gamma_s = self.schedule.gamma(t), self.schedule.gamma(s)
        sigma2_ts, sigma_ts, alpha_ts = NoiseSchedule.sigma_and_alpha_t_given_s(gamma_t, gamma_s)
        sigma_s, sigma_t = NoiseSchedule.sigma_from_gamma(gamma_s), NoiseSchedule.sigma_from_gamma(gamma_t)
        if eps is None:
            eps = self.denoise(z_pos, z_h, t, batch, context)
        c1 = (1.0 / alpha_ts)[batch].unsqueeze(1)
        c2 = (sigma2_ts / alpha_ts / sigma_t)[batch].unsqueeze(1)
        std = (sigma_ts * sigma_s / sigma_t)[batch].unsqueeze(1)
        if noise is None:
            noise = self.sample_noise(batch, num_graphs, z_pos.dtype, generator)
        new_pos = c1 * z_pos - c2 * eps[0] + std * noise[0]
        new_h = c1 * z_h - c2 * eps[1] + std * noise[1]
        return remove_mean(new_pos, batch, num_graphs), new_h

    def sample_p_xh_given_z0(
        self, z_pos: torch.Tensor, z_h: torch.Tensor, batch: torch.Tensor, num_graphs: int,
        context: torch.Tensor | None = None, generator: torch.Generator | None = None,
        eps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Final step: positions from ``N(x_hat_0, sigma_0 / alpha_0)``, types from ``argmax`` of ``z_0``.

        Returns:
            ``pos [N, 3]`` (Å), ``types [N]`` long (index into the vocabulary), ``charges [N]`` long
            (rounded atomic-number channel; zeros without charges).
        """
        t0 = torch.zeros(num_graphs, dtype=z_pos.dtype, device=z_pos.device)
        gamma_0 = self.schedule.gamma(t0)
        if eps is None:
            eps = self.denoise(z_pos, z_h, t0, batch, context)
        a0 = NoiseSchedule.alpha_from_gamma(gamma_0)[batch].unsqueeze(1)
        s0 = NoiseSchedule.sigma_from_gamma(gamma_0)[batch].unsqueeze(1)
        x_hat = (z_pos - s0 * eps[0]) / a0
        noise_pos = sample_zero_com_gaussian(batch, num_graphs, generator, z_pos.dtype)
        pos = remove_mean(x_hat + (s0 / a0) * noise_pos, batch, num_graphs) * self.norm_values[0]
        # EDM takes the argmax of z_0 itself (not of a network output). EDM slices z0[:, 3:-1] even
        # without charges, which drops the last class; we slice by num_classes (see docs/metrics.md).
        types = torch.argmax(z_h[:, : self.num_classes], dim=1)  # categorical: z_h is the final one-hot
        if self.include_charges:
            charges = torch.round(z_h[:, self.num_classes] * self.norm_values[2]).long()
        else:
            charges = torch.zeros_like(types)
        return pos, types, charges
