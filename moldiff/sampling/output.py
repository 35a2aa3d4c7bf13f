"""What samplers return (:class:`SampleOutput`, sparse, as tensors); :data:`EpsFn` comes from :mod:`moldiff.types`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moldiff.types import EpsFn

__all__ = ["EpsFn", "SampleOutput", "concat_outputs", "split_bonds"]


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
        bond_index: ``[2, E]`` the model's bonds as global atom pairs ``i < j`` (models with a bond
            channel), else ``None``.
        bond_type: ``[E]`` their codes (``moldiff.constants.BOND_ORDERS``), else ``None``.
    """

    pos: torch.Tensor
    types: torch.Tensor
    charges: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    chain: list | None = None
    bond_index: torch.Tensor | None = None
    bond_type: torch.Tensor | None = None

    @property
    def atomic_numbers(self) -> torch.Tensor:
        """``[N]`` atomic numbers: the :attr:`charges` channel under the name of what it holds."""
        return self.charges

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-molecule ``(types [n], pos [n, 3])`` on the CPU, in order."""
        counts = torch.bincount(self.batch.cpu(), minlength=self.num_graphs).tolist()
        types, pos = torch.split(self.types.cpu(), counts), torch.split(self.pos.cpu(), counts)
        return list(zip(types, pos, strict=True))

    @property
    def has_bonds(self) -> bool:
        """Whether the model predicted bonds (:attr:`bond_index`)."""
        return self.bond_index is not None

    def split_bonds(self) -> list[list[tuple[int, int, int]]]:
        """Per-molecule bonds ``[(i, j, code), ...]`` with molecule-local atom indices (raises without bonds)."""
        return split_bonds(self.bond_index, self.bond_type, self.batch, self.num_graphs)

    def cpu(self) -> SampleOutput:
        """This output with its tensors on the CPU (the chain is dropped)."""
        bonds = {} if self.bond_index is None else {"bond_index": self.bond_index.cpu(),
                                                    "bond_type": self.bond_type.cpu()}
        return SampleOutput(pos=self.pos.cpu(), types=self.types.cpu(), charges=self.charges.cpu(),
                            batch=self.batch.cpu(), num_graphs=self.num_graphs, **bonds)


def split_bonds(bond_index: torch.Tensor | None, bond_type: torch.Tensor | None, batch: torch.Tensor,
                num_graphs: int) -> list[list[tuple[int, int, int]]]:
    """Per-molecule bonds ``[(i, j, code), ...]`` with molecule-local atom indices.

    Args:
        bond_index: ``[2, E]`` global atom pairs (``None``: the output holds no bonds, ``ValueError``).
        bond_type: ``[E]`` bond codes.
        batch: ``[N]`` molecule index of every atom.
        num_graphs: number of molecules.

    >>> split_bonds(torch.tensor([[0, 2], [1, 3]]), torch.tensor([1, 2]), torch.tensor([0, 0, 1, 1]), 2)
    [[(0, 1, 1)], [(0, 1, 2)]]
    """
    if bond_index is None or bond_type is None:
        raise ValueError("this output holds no bonds (the model has no bond channel)")
    batch = batch.cpu()
    counts = torch.bincount(batch, minlength=num_graphs)
    first = (torch.cumsum(counts, 0) - counts).tolist()
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(num_graphs)]
    index, codes = bond_index.cpu(), bond_type.cpu()
    for i, j, code in zip(index[0].tolist(), index[1].tolist(), codes.tolist(), strict=True):
        m = int(batch[i])
        out[m].append((i - first[m], j - first[m], int(code)))
    return out


def concat_outputs(parts: Sequence[SampleOutput]) -> SampleOutput:
    """One :class:`SampleOutput` (CPU tensors) holding the molecules of ``parts`` in order."""
    offsets = torch.cumsum(torch.tensor([0] + [p.num_graphs for p in parts[:-1]]), 0).tolist()
    bonds = {}
    if parts and all(p.bond_index is not None for p in parts):
        atom_offsets = torch.cumsum(torch.tensor([0] + [p.pos.shape[0] for p in parts[:-1]]), 0).tolist()
        bonds = {"bond_index": torch.cat([p.bond_index.cpu() + o for p, o in zip(parts, atom_offsets, strict=True)],
                                         dim=1),
                 "bond_type": torch.cat([p.bond_type.cpu() for p in parts])}
    return SampleOutput(
        pos=torch.cat([p.pos.cpu() for p in parts]), types=torch.cat([p.types.cpu() for p in parts]),
        charges=torch.cat([p.charges.cpu() for p in parts]),
        batch=torch.cat([p.batch.cpu() + o for p, o in zip(parts, offsets, strict=True)]),
        num_graphs=sum(p.num_graphs for p in parts), **bonds,
    )
