"""The network call of a reverse step and the discrete channels it drives, shared by the sampler and inpainting.

A reverse step ``t -> s`` of :class:`~moldiff.diffusion.process.EquivariantDiffusion` calls the
denoiser at ``t``; the positions (and Gaussian features ``h``) then move with a solver of
:mod:`moldiff.sampling.solvers`. Everything else the network reads, and everything drawn from its
output, is held by :class:`DiscreteChannels`:

* categorical atom types (``type_process``): the current one-hot types ``/ norm_values[1]``, which
  the network reads as ``h`` (whatever a solver did to ``h``); the types at ``s`` are drawn from
  the clean-type logits (``reverse_types``) and the solver gets zeros as the noise prediction of
  ``h``;
* the bond channel (``bond_process``): the current one-hot class of every atom pair
  (:func:`~moldiff.geometry.molecule_pairs`), read by the network (``bonds=``) and drawn at ``s``
  from the clean-bond logits (``reverse_bonds``);
* self-conditioning: the network's previous clean estimate (``x0_from_eps``), fed back at the
  next call.

For a Gaussian model without self-conditioning :meth:`DiscreteChannels.predict` is a plain
``process.denoise``. Every random draw uses the one generator given, in a fixed order (types
before bonds), so a run is reproducible from its seed. Inpainting
(:mod:`moldiff.sampling.inpaint`) also overwrites the fixed atoms' / pairs' rows
(:meth:`~DiscreteChannels.fix`) and re-noises the channels for RePaint's resampling
(:meth:`~DiscreteChannels.renoise`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.geometry import molecule_pairs


class DiscreteChannels:
    """Current categorical types, bond classes and self-conditioning estimate of one sampling batch.

    Args:
        process: the diffusion process (Gaussian or categorical types, with or without bonds).
        batch: ``[N]`` molecule index of every atom (on the sampling device).
        context: ``[B, C]`` conditioning passed to the network, or ``None``.
        generator: RNG of every draw (``None``: the global one).
        net: optional override of the network call, ``(z_pos, z_h, t) -> output`` in the process's
            ``denoise`` format (e.g. classifier-free guidance, which mixes the noise predictions and,
            for categorical types, the clean-type logits); not with bonds or self-conditioning.

    Attributes:
        categorical: whether atom types are categorical (``types`` is used).
        has_bonds: whether the model has a bond channel (``bonds`` and ``pairs`` are used).
        types: ``[N, K]`` current one-hot types ``/ norm_values[1]`` (categorical; set by :meth:`start`).
        bonds: ``[P, K_b]`` current one-hot class of every pair (bond channel; set by :meth:`start`).
        pairs: ``[2, P]`` the atom pairs of the bond channel (``molecule_pairs(batch)``), else ``None``.
        self_cond: the previous clean estimate ``(pos, h)`` of a self-conditioned denoiser, else ``None``.
        fixed: ``[N]`` bool, atoms given clean to a fragment-conditioned denoiser (``fragment_input``;
            set by inpainting), else ``None`` (every flag 0).
    """

    def __init__(self, process: EquivariantDiffusion, batch: torch.Tensor, context: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
                 ) -> None:
        self.process = process
        self.net = net
        self.batch = batch
        self.context = context
        self.generator = generator
        self.categorical = bool(getattr(process, "categorical_types", False))
        self.has_bonds = bool(getattr(process, "has_bonds", False))
        self.self_conditioning = bool(getattr(process, "self_conditioning", False))
        self.norm_h = process.norm_values[1]
        self.dtype = torch.get_default_dtype()
        self.types: torch.Tensor | None = None
        self.bonds: torch.Tensor | None = None
        self.pairs = molecule_pairs(batch) if self.has_bonds else None
        self.self_cond: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fixed: torch.Tensor | None = None
        if net is not None and (self.has_bonds or self.self_conditioning):
            raise ValueError("guidance / eps_fn is not supported yet with a bond channel or self-conditioning")

    def start(self, dtype: torch.dtype, device: torch.device | str) -> None:
        """Draw the channels at ``t = T`` from their priors: the types, then the bond classes."""
        self.dtype = dtype
        proc, gen = self.process, self.generator
        if self.categorical:
            n = self.batch.shape[0]
            self.types = proc.type_process.prior_sample(n, generator=gen, dtype=dtype).to(device) / self.norm_h
        if self.has_bonds:
            n_pairs = self.pairs.shape[1]  # type: ignore[union-attr]
            self.bonds = proc.bond_process.prior_sample(n_pairs, generator=gen, dtype=dtype).to(device)

    def denoise(self, z_pos: torch.Tensor, z_h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``process.denoise`` at ``t [B]`` with the current bonds and self-conditioning estimate (then updated).

        Returns the network's raw output: ``(eps_pos, eps_h)``; categorical ``(eps_pos, type logits)``
        and, with bonds, the clean-bond logits third.
        """
        proc = self.process
        if self.net is not None:  # an override such as classifier-free guidance: (z_pos, z_h, t) -> output
            return self.net(z_pos, z_h, t)
        kw = {"bonds": self.bonds} if self.has_bonds else {}
        if self.fixed is not None:
            kw["fixed"] = self.fixed
        if not self.self_conditioning:
            return proc.denoise(z_pos, z_h, t, self.batch, self.context, **kw)
        eps = proc.denoise(z_pos, z_h, t, self.batch, self.context, self_cond=self.self_cond, **kw)
        self.self_cond = proc.x0_from_eps(z_pos, z_h, eps, t, self.batch)
        return eps

    def draw(self, out: tuple[torch.Tensor, ...], t: torch.Tensor, s: torch.Tensor) -> None:
        """Move the channels from ``t`` to ``s`` with ``out``'s logits: ``x_s ~ p(x_s | x_t)``, then the bonds."""
        proc, gen = self.process, self.generator
        self.types = proc.reverse_types(self.types * self.norm_h, out[1], t, s, self.batch, gen) / self.norm_h
        if self.has_bonds:
            self.bonds = proc.reverse_bonds(self.bonds, out[2], t, s, self.batch, gen)

    def predict(self, z_pos: torch.Tensor, z_h: torch.Tensor, t: torch.Tensor,
                s: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Noise prediction at ``t`` for the solver; categorical: also draws the channels at ``s`` (if given).

        Gaussian types: :meth:`denoise` of ``(z_pos, z_h)``. Categorical: the network reads
        :attr:`types` (not ``z_h``), the channels move to ``s`` and the prediction for ``h`` is zeros.
        """
        if not self.categorical:
            return self.denoise(z_pos, z_h, t)
        out = self.denoise(z_pos, self.types, t)  # type: ignore[arg-type]
        if s is not None:
            self.draw(out, t, s)
        return out[0], torch.zeros_like(z_h)

    def fix(self, atoms: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor | None = None,
            bonds: torch.Tensor | None = None) -> None:
        """Inpainting: rows ``atoms`` of the types get ``types``, rows ``pairs`` of the bonds ``bonds`` (on copies)."""
        self.types = self.types.clone()  # type: ignore[union-attr]
        self.types[atoms] = types
        if self.has_bonds:
            b = self.bonds.clone()  # type: ignore[union-attr]
            b[pairs] = bonds
            self.bonds = b

    def renoise(self, s: float, t: float) -> None:
        """Inpainting's jump back from ``s`` to ``t > s``: ``x_t ~ q(x_t | x_s)``, then ``b_t ~ q(b_t | b_s)``."""
        gen = self.generator
        if self.categorical:
            tp = self.process.type_process
            probs = tp.transition_probs(self.types.to(torch.float64) * self.norm_h, s, t)  # type: ignore[union-attr]
            self.types = torch.nn.functional.one_hot(tp.sample_categorical(probs, gen),
                                                     self.process.num_classes).to(self.dtype) / self.norm_h
        if self.has_bonds:
            bp = self.process.bond_process
            probs = bp.transition_probs(self.bonds.to(torch.float64), s, t)  # type: ignore[union-attr]
            self.bonds = torch.nn.functional.one_hot(bp.sample_categorical(probs, gen), bp.num_classes).to(self.dtype)

    def bond_output(self, fixed_pairs: torch.Tensor | None = None,
                    fixed_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"bond_index", "bond_type"}`` of the current classes, class 0 (no bond) dropped; ``{}`` without bonds.

        Inpainting: pairs ``fixed_pairs`` get exactly the classes ``fixed_classes``.
        """
        if not self.has_bonds:
            return {}
        cls = self.bonds.argmax(1)  # type: ignore[union-attr]
        if fixed_pairs is not None:
            cls[fixed_pairs] = fixed_classes
        keep = cls > 0
        return {"bond_index": self.pairs[:, keep], "bond_type": cls[keep]}  # type: ignore[index]
