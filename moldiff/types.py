"""Batch containers and the Denoiser protocol shared by ``nn``, ``diffusion`` and ``sampling``.

Molecules are stored sparsely, PyG style: atoms of all molecules are concatenated and ``batch``
maps every atom to its molecule, so no molecule is padded to the largest one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch


@dataclass
class MolBatch:
    """A batch of molecules.

    Attributes:
        pos: ``[N, 3]`` positions in Å.
        one_hot: ``[N, K]`` one-hot atom types over the model's element vocabulary.
        charges: ``[N, 1]`` atomic numbers (EDM's "charges" channel), float.
        batch: ``[N]`` long, molecule index of each atom (sorted, 0..B-1).
        num_graphs: ``B``.
        context: ``[B, C]`` conditioning properties (already normalised) or ``None``.
        bond_index: ``[2, E]`` long, each bond once as global atom indices ``i < j``, or ``None``
            (datasets without bonds).
        bond_type: ``[E]`` long bond-type codes (1 single, 2 double, 3 triple, 4 aromatic; see
            ``moldiff.constants.BOND_ORDERS``), or ``None``.
        formal_charge: ``[N]`` long formal charges, or ``None``.
    """

    pos: torch.Tensor
    one_hot: torch.Tensor
    charges: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    context: torch.Tensor | None = None
    bond_index: torch.Tensor | None = None
    bond_type: torch.Tensor | None = None
    formal_charge: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> MolBatch:
        """Return a copy on ``device``."""
        ctx = None if self.context is None else self.context.to(device)
        return replace(
            self,
            pos=self.pos.to(device),
            one_hot=self.one_hot.to(device),
            charges=self.charges.to(device),
            batch=self.batch.to(device),
            context=ctx,
            **{k: getattr(self, k).to(device) for k in ("bond_index", "bond_type", "formal_charge")
               if getattr(self, k) is not None},
        )

    @property
    def num_atoms(self) -> torch.Tensor:
        """``[B]`` atom count of every molecule."""
        return torch.bincount(self.batch, minlength=self.num_graphs)


@runtime_checkable
class Denoiser(Protocol):
    """A network predicting the noise of a noisy molecule.

    ``(pos, h, t, batch, context) -> (eps_pos, eps_h)`` with ``pos [N, 3]``, ``h [N, F]``,
    ``t [B]`` (normalised time in [0, 1]), ``batch [N]``, ``context [B, C] | None``;
    ``eps_pos [N, 3]`` has zero mean per molecule and ``eps_h [N, F]``.
    """

    def __call__(
        self,
        pos: torch.Tensor,
        h: torch.Tensor,
        t: torch.Tensor,
        batch: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict ``(eps_pos, eps_h)``."""
        ...
