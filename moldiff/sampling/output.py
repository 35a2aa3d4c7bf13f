"""What samplers return (:class:`SampleOutput`, sparse, as tensors); :data:`EpsFn` comes from :mod:`moldiff.types`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moldiff.types import EpsFn

__all__ = ["EpsFn", "SampleOutput", "concat_outputs"]


@dataclass
class SampleOutput:
    """Sampled molecules, sparse.

    Attributes:
        pos: ``[N, 3]`` positions (Å).
        types: ``[N]`` atom-type index into the model's vocabulary.
        charges: ``[N]`` the rounded atomic-number channel (EDM's "charges"; :attr:`atomic_numbers`),
            zeros if the model has none.
        batch: ``[N]`` molecule index.
        num_graphs: number of molecules.
        chain: optional list of ``(pos, types)`` snapshots along the trajectory.
    """

    pos: torch.Tensor
    types: torch.Tensor
    charges: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    chain: list | None = None

    @property
    def atomic_numbers(self) -> torch.Tensor:
        """``[N]`` atomic numbers: the :attr:`charges` channel under the name of what it holds."""
        return self.charges

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-molecule ``(types [n], pos [n, 3])`` on the CPU, in order."""
        counts = torch.bincount(self.batch.cpu(), minlength=self.num_graphs).tolist()
        types, pos = torch.split(self.types.cpu(), counts), torch.split(self.pos.cpu(), counts)
        return list(zip(types, pos, strict=True))

    def cpu(self) -> SampleOutput:
        """This output with its tensors on the CPU (the chain is dropped)."""
        return SampleOutput(pos=self.pos.cpu(), types=self.types.cpu(), charges=self.charges.cpu(),
                            batch=self.batch.cpu(), num_graphs=self.num_graphs)


def concat_outputs(parts: Sequence[SampleOutput]) -> SampleOutput:
    """One :class:`SampleOutput` (CPU tensors) holding the molecules of ``parts`` in order."""
    offsets = torch.cumsum(torch.tensor([0] + [p.num_graphs for p in parts[:-1]]), 0).tolist()
    return SampleOutput(
        pos=torch.cat([p.pos.cpu() for p in parts]), types=torch.cat([p.types.cpu() for p in parts]),
        charges=torch.cat([p.charges.cpu() for p in parts]),
        batch=torch.cat([p.batch.cpu() + o for p, o in zip(parts, offsets, strict=True)]),
        num_graphs=sum(p.num_graphs for p in parts),
    )
