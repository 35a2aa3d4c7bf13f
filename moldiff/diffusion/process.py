"""E(3)-equivariant variational diffusion (EDM, Hoogeboom et al. 2022) on sparse molecule batches.

The process owns the forward noising ``q(z_t | x)``, the training loss (EDM's L2 objective), the
variational bound used as NLL, one reverse step ``p(z_s | z_t)`` and the final ``p(x, h | z_0)``.
It receives any :class:`moldiff.types.Denoiser`; it never imports ``moldiff.nn``.

State layout: positions ``pos [N, 3]`` (zero centre of mass per molecule) and features
``h [N, K + c]`` = ``[one_hot / norm_values[1], charges / norm_values[2]]`` (``c`` = 1 with
charges, 0 without).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.diffusion.time_sampling import TimeSampler
from moldiff.geometry import molecule_pairs, pair_classes, remove_mean, sample_zero_com_gaussian, scatter_sum
from moldiff.types import Denoiser, MolBatch

_EPS = 1e-10

#: ``(eps_pos [N, 3], x [N, 3], batch [N], num_graphs) -> eps_pos``: a noise-to-data alignment for training.
NoiseAlign = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2)))


def _atom_sum(values: torch.Tensor, index: torch.Tensor, num_graphs: int, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-molecule sum of per-atom (or per-pair) ``values``, each times ``weight`` when given (0: fixed)."""
    return scatter_sum(values if weight is None else values * weight, index, num_graphs)


@dataclass
class LossOutput:
    """Per-molecule loss terms (``[B]`` each); ``loss`` is what training minimises."""

    loss: torch.Tensor
    error_t: torch.Tensor
    kl_prior: torch.Tensor
    t_int: torch.Tensor


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

    # ------------------------------------------------------------------ likelihood terms
    def kl_prior(self, pos: torch.Tensor, h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """``KL(q(z_T | x) || N(0, I))`` per molecule (negligible; a schedule sanity check)."""
        gamma_T = self.schedule.gamma(torch.ones(1, device=pos.device))
        a_T, s_T = NoiseSchedule.alpha_from_gamma(gamma_T), NoiseSchedule.sigma_from_gamma(gamma_T)
        n = torch.bincount(batch, minlength=num_graphs).to(pos.dtype)
        mu2_h = scatter_sum((a_T * h) ** 2, batch, num_graphs).sum(1)
        kl_h = n * h.shape[1] * (-torch.log(s_T) + 0.5 * s_T**2 - 0.5) + 0.5 * mu2_h
        d = (n - 1) * 3
        mu2_x = scatter_sum((a_T * pos) ** 2, batch, num_graphs).sum(1)
        kl_x = d * (-torch.log(s_T)) + 0.5 * (d * s_T**2 + mu2_x) - 0.5 * d
        return kl_x + kl_h

    def log_constants_p_x_given_z0(self, batch: torch.Tensor, num_graphs: int, dtype: torch.dtype) -> torch.Tensor:
        """Normalisation constant of the Gaussian ``p(x | z_0)`` on the zero-CoM subspace."""
        n = torch.bincount(batch, minlength=num_graphs).to(dtype)
        gamma_0 = self.schedule.gamma(torch.zeros(1, device=batch.device))
        log_sigma_x = 0.5 * gamma_0
        return (n - 1) * 3 * (-log_sigma_x - 0.5 * math.log(2 * math.pi))

    def log_pxh_given_z0_without_constants(
        self, h: torch.Tensor, z_h: torch.Tensor, error_x: torch.Tensor, batch: torch.Tensor, num_graphs: int,
        atom_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(x, h | z_0)`` up to constants: Gaussian on x, discretised Gaussians on types/charges.

        ``atom_weight [N]``: optional per-atom weights of the type/charge terms (0 for fixed atoms).
        """
        sigma0 = NoiseSchedule.sigma_from_gamma(self.schedule.gamma(torch.zeros(1, device=h.device)))
        k = self.num_classes
        onehot = h[:, :k] * self.norm_values[1]
        est_cat = z_h[:, :k] * self.norm_values[1]
        s_cat = sigma0 * self.norm_values[1]
        centred = est_cat - 1
        log_p_cat = torch.log(_cdf((centred + 0.5) / s_cat) - _cdf((centred - 0.5) / s_cat) + _EPS)
        log_p_cat = log_p_cat - torch.logsumexp(log_p_cat, dim=1, keepdim=True)
        per_atom = (log_p_cat * onehot).sum(1)
        if self.include_charges:
            charge = torch.round(h[:, k:] * self.norm_values[2])
            est = z_h[:, k:] * self.norm_values[2]
            s_int = sigma0 * self.norm_values[2]
            c = charge - est
            per_atom = per_atom + torch.log(_cdf((c + 0.5) / s_int) - _cdf((c - 0.5) / s_int) + _EPS).sum(1)
        if atom_weight is not None:
            per_atom = per_atom * atom_weight
        log_p_h = scatter_sum(per_atom, batch, num_graphs)
        return -0.5 * error_x + log_p_h

    # ------------------------------------------------------------------ objectives
    def loss(
        self, mol: MolBatch, generator: torch.Generator | None = None, t_int: torch.Tensor | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None, noise_align: NoiseAlign | None = None,
        fixed: torch.Tensor | None = None,
    ) -> LossOutput:
        """EDM's training objective (one network call), per molecule.

        ``t`` is drawn from ``{0, ..., T}`` by ``time_sampler`` (uniformly by default); at ``t = 0``
        the discretised ``L_0`` term is used. With ``loss_type="l2"`` the squared error is divided by
        ``(3 + F) * max_n_atoms`` as in EDM (padded formulation), and the VLB weighting is dropped.

        Args:
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
                translated to the centre of mass of their noisy rows (:meth:`place_fixed`; the
                molecule's centre of mass is unchanged), their clean types and, with a bond channel,
                the clean classes of the pairs among them; the denoiser reads the flag
                (``fragment_input``) and the loss counts the free atoms (and pairs with a free atom)
                only, with the same normalisation. ``None``: no fixed atoms (bit-identical to before).

        Returns:
            :class:`LossOutput` with ``[B]`` tensors.
        """
        pos, h = self.normalize(mol)
        B, batch, T = mol.num_graphs, mol.batch, self.timesteps
        dev = pos.device
        if t_int is None:
            t_int = self.time_sampler.sample(B, T, generator, dev)
        t = t_int.to(pos.dtype) / T
        s = (t_int - 1).clamp(min=0).to(pos.dtype) / T
        gamma_t, gamma_s = self.schedule.gamma(t), self.schedule.gamma(s)
        eps_pos, eps_h = noise if noise is not None else self.sample_noise(batch, B, pos.dtype, generator)
        if noise_align is not None:
            eps_pos = noise_align(eps_pos, pos, batch, B)
        free = None if fixed is None else (~fixed).to(pos.dtype)  # per-atom loss weight
        if self.categorical_types:
            return self._categorical_loss(mol, pos, eps_pos, t, gamma_t, t_int, generator, fixed)
        z_pos, z_h = self.q_sample(pos, h, gamma_t, batch, eps_pos, eps_h)
        if fixed is not None:  # the fragment enters clean
            z_pos = self.place_fixed(z_pos, pos, fixed, batch, B)
            z_h = torch.where(fixed.unsqueeze(1), h, z_h)
        if not self.weighting.on_eps:
            return self._x0_loss(mol, pos, h, z_pos, z_h, t, gamma_t, t_int, generator, fixed)
        sc = self._train_self_cond(z_pos, z_h, t, batch, mol.context, generator, fixed=fixed)
        pred_pos, pred_h = self.denoise(z_pos, z_h, t, batch, mol.context, self_cond=sc, fixed=fixed)
        err_x = _atom_sum(((eps_pos - pred_pos) ** 2).sum(1), batch, B, free)
        err_h = _atom_sum(((eps_h - pred_h) ** 2).sum(1), batch, B, free)
        error = err_x + err_h
        if self.training and self.loss_type == "l2":
            denom = (3 + self.feature_dim) * int(torch.bincount(batch, minlength=B).max())
            error, err_x = error / denom, err_x / denom
            weight = torch.ones_like(error)
        else:
            weight = torch.exp(-(gamma_s - gamma_t)) - 1.0
        loss_t = 0.5 * weight * error
        loss_0 = -self.log_pxh_given_z0_without_constants(h, z_h, err_x, batch, B, free)
        is_zero = (t_int == 0).to(pos.dtype)
        loss_t = is_zero * loss_0 + (1 - is_zero) * loss_t
        if not (self.training and self.loss_type == "l2"):
            loss_t = T * loss_t
        kl = self.kl_prior(pos, h, batch, B)
        return LossOutput(loss=loss_t + kl, error_t=error, kl_prior=kl, t_int=t_int)

    def _x0_loss(
        self, mol: MolBatch, pos: torch.Tensor, h: torch.Tensor, z_pos: torch.Tensor, z_h: torch.Tensor,
        t: torch.Tensor, gamma_t: torch.Tensor, t_int: torch.Tensor, generator: torch.Generator | None = None,
        fixed: torch.Tensor | None = None,
    ) -> LossOutput:
        """``0.5 w(SNR_t) |x - x0_hat|^2 / ((3 + F) max_n)`` per molecule (EDM's normalisation)."""
        B, batch = mol.num_graphs, mol.batch
        free = None if fixed is None else (~fixed).to(pos.dtype)
        sc = self._train_self_cond(z_pos, z_h, t, batch, mol.context, generator, fixed=fixed)
        x0_pos, x0_h = self.predict_x0(z_pos, z_h, t, batch, mol.context, self_cond=sc, fixed=fixed)
        err = _atom_sum(((pos - x0_pos) ** 2).sum(1) + ((h - x0_h) ** 2).sum(1), batch, B, free)
        weight = self.weighting.x0_weight(torch.exp(-gamma_t))
        denom = (3 + self.feature_dim) * int(torch.bincount(batch, minlength=B).max())
        loss = 0.5 * weight * err / denom
        zero = torch.zeros_like(loss)
        return LossOutput(loss=loss, error_t=err, kl_prior=zero, t_int=t_int)

    def _categorical_loss(
        self, mol: MolBatch, pos: torch.Tensor, eps_pos: torch.Tensor, t: torch.Tensor, gamma_t: torch.Tensor,
        t_int: torch.Tensor, generator: torch.Generator | None, fixed: torch.Tensor | None = None,
    ) -> LossOutput:
        """Positions as configured (EDM's ``eps`` L2 or the weighted ``x0`` error) + type cross-entropy."""
        B, batch = mol.num_graphs, mol.batch
        free = None if fixed is None else (~fixed).to(pos.dtype)
        alpha, sigma = self._alpha_sigma_atoms(t, batch, gamma_t)
        z_pos = alpha * pos + sigma * eps_pos
        x0_types = mol.one_hot.to(pos.dtype)
        x_t = self.type_process.q_sample(x0_types, t[batch], generator=generator).to(pos.dtype)
        if fixed is not None:  # the fragment enters clean (the draws above are made all the same)
            z_pos = self.place_fixed(z_pos, pos, fixed, batch, B)
            x_t = torch.where(fixed.unsqueeze(1), x0_types, x_t)
        h_t = x_t / self.norm_values[1]
        bonds_t = pairs = x0_bonds = None
        if self.has_bonds:
            if mol.bond_index is None:
                raise ValueError("a model with a bond channel needs training data with bonds (an SDF or SMILES "
                                 "dataset, or QM9 after `moldiff data prepare`, which derives them)")
            pairs = molecule_pairs(batch)
            classes = pair_classes(pairs, mol.bond_index, mol.bond_type, batch.shape[0])
            x0_bonds = torch.nn.functional.one_hot(classes, self.bond_process.num_classes).to(pos.dtype)
            bonds_t = self.bond_process.q_sample(x0_bonds, t[batch[pairs[0]]], generator=generator).to(pos.dtype)
            if fixed is not None:  # pairs among fixed atoms: their clean class
                bonds_t = torch.where((fixed[pairs[0]] & fixed[pairs[1]]).unsqueeze(1), x0_bonds, bonds_t)
        sc = self._train_self_cond(z_pos, h_t, t, batch, mol.context, generator, bonds_t, fixed)
        out = self._net(z_pos, h_t, t, batch, mol.context, sc, bonds_t, fixed)
        out_pos, logits = out[0], out[1]
        max_n = int(torch.bincount(batch, minlength=B).max())
        if self.weighting.on_eps:
            eps_hat = self.parameterization.to_eps((out_pos, x_t), (z_pos, x_t), alpha, sigma)[0]
            err = _atom_sum(((eps_pos - eps_hat) ** 2).sum(1), batch, B, free)
            pos_loss = 0.5 * err / (3 * max_n)
        else:
            x0_hat = self.parameterization.to_x0((out_pos, x_t), (z_pos, x_t), alpha, sigma)[0]
            err = _atom_sum(((pos - x0_hat) ** 2).sum(1), batch, B, free)
            pos_loss = 0.5 * self.weighting.x0_weight(torch.exp(-gamma_t)) * err / max_n
        ce = _atom_sum(self.type_process.loss(logits, x0_types, t[batch]), batch, B, free)
        loss = pos_loss + self.type_loss_weight * ce / max_n
        if self.has_bonds:
            pair_mol = batch[pairs[0]]
            free_pair = None if fixed is None else (~(fixed[pairs[0]] & fixed[pairs[1]])).to(loss.dtype)
            bond_ce = _atom_sum(self.bond_process.loss(out[2], x0_bonds, t[pair_mol]), pair_mol, B, free_pair)
            n_pairs = torch.bincount(pair_mol, minlength=B).clamp(min=1).to(loss.dtype)
            loss = loss + self.bond_loss_weight * bond_ce / n_pairs
        return LossOutput(loss=loss, error_t=err, kl_prior=torch.zeros_like(loss), t_int=t_int)

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

    @torch.no_grad()
    def nll(self, mol: MolBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unbiased variational bound ``-log p(x, h | N)`` per molecule (two network calls).

        Uses ``t ~ U{1..T}`` weighted by ``T (SNR(s) / SNR(t) - 1) / 2`` plus an exact ``L_0`` term,
        the prior KL and the Gaussian constants (EDM's ``t0_always=True`` estimator). Add
        ``-log p(N)`` for the full NLL.
        """
        pos, h = self.normalize(mol)
        B, batch, T = mol.num_graphs, mol.batch, self.timesteps
        if self.categorical_types:  # no bound for the mixed continuous/discrete model (yet)
            return torch.full((B,), float("nan"), dtype=pos.dtype, device=pos.device)
        dev = pos.device
        t_int = torch.randint(1, T + 1, (B,), generator=generator).to(dev)
        t, s = t_int.to(pos.dtype) / T, (t_int - 1).to(pos.dtype) / T
        gamma_t, gamma_s = self.schedule.gamma(t), self.schedule.gamma(s)
        eps_pos, eps_h = self.sample_noise(batch, B, pos.dtype, generator)
        z_pos, z_h = self.q_sample(pos, h, gamma_t, batch, eps_pos, eps_h)
        pred_pos, pred_h = self.denoise(z_pos, z_h, t, batch, mol.context)
        err = scatter_sum(((eps_pos - pred_pos) ** 2).sum(1) + ((eps_h - pred_h) ** 2).sum(1), batch, B)
        loss_t = T * 0.5 * (torch.exp(-(gamma_s - gamma_t)) - 1.0) * err
        # exact L_0 term at t = 0
        t0 = torch.zeros(B, dtype=pos.dtype, device=dev)
        gamma_0 = self.schedule.gamma(t0)
        eps_pos0, eps_h0 = self.sample_noise(batch, B, pos.dtype, generator)
        z_pos0, z_h0 = self.q_sample(pos, h, gamma_0, batch, eps_pos0, eps_h0)
        pred_pos0, _ = self.denoise(z_pos0, z_h0, t0, batch, mol.context)
        err_x0 = scatter_sum(((eps_pos0 - pred_pos0) ** 2).sum(1), batch, B)
        loss_0 = -self.log_pxh_given_z0_without_constants(h, z_h0, err_x0, batch, B)
        neg_log_const = -self.log_constants_p_x_given_z0(batch, B, pos.dtype)
        return loss_t + loss_0 + neg_log_const + self.kl_prior(pos, h, batch, B)

    # ------------------------------------------------------------------ reverse process
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
