"""The contract every forward process implements, whatever it diffuses and however its network predicts.

Training, sampling and inference talk to a process only through these methods, so a new process
(another noise family, a flow, a process over bonds) plugs into the trainer, the samplers and
``moldiff sample`` without edits there. :class:`~moldiff.diffusion.process.EquivariantDiffusion`
(EDM's Gaussian process, with ``eps`` or ``x0`` prediction and optional categorical atom types)
is the implementation shipped today.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from moldiff.types import MolBatch


@runtime_checkable
class DiffusionProcess(Protocol):
    """A forward process with its reverse-time sampler hooks.

    * **training loss**: ``loss(mol, generator) -> LossOutput`` (per-molecule ``loss [B]``);
    * **prior sample**: ``sample_noise(batch, num_graphs, dtype, generator)`` draws the state at
      ``t = 1`` (positions on the zero-CoM subspace, features);
    * **network prediction**: ``denoise(pos, h, t, batch, context)`` returns the noise prediction
      every solver consumes (``predict_x0`` the clean-molecule prediction), whatever the network's
      own parameterization;
    * **reverse update**: ``p_zs_given_zt(...)`` one ancestral step from ``t`` to ``s < t`` given a
      prediction; solvers in :mod:`moldiff.sampling.solvers` take larger steps from the same
      prediction through :meth:`schedule` algebra; discrete channels update with
      ``reverse_types``;
    * **decode**: ``sample_p_xh_given_z0(...) -> (pos, types, charges)`` turns the final state
      into a molecule.
    """

    timesteps: int
    num_classes: int

    def loss(self, mol: MolBatch, generator: torch.Generator | None = None) -> Any:
        """Per-molecule training loss (``.loss [B]``)."""
        ...

    def sample_noise(self, batch: torch.Tensor, num_graphs: int, dtype: torch.dtype = torch.float32,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A draw from the prior (``t = 1``)."""
        ...

    def denoise(self, pos: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor,
                context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise prediction at normalised time ``t [B]``."""
        ...

    def p_zs_given_zt(self, z_pos: torch.Tensor, z_h: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                      batch: torch.Tensor, num_graphs: int, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from ``t`` to ``s``."""
        ...

    def sample_p_xh_given_z0(self, z_pos: torch.Tensor, z_h: torch.Tensor, batch: torch.Tensor, num_graphs: int,
                             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode the final state to ``(pos, types, charges)``."""
        ...
