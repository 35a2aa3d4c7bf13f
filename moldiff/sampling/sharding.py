"""Sampling sharded across processes, e.g. one per GPU under ``torchrun``.

Every process plans the same batches (same seed, same sizes); batch ``k`` is sampled by rank
``k % world_size`` (:meth:`moldiff.sampling.sampler.Sampler.iter_batches`), and
:func:`gather_in_order` hands all batches to rank 0 in order, one round of ``world_size`` batches
at a time, so rank 0 can stream them to disk while the others keep sampling. The molecules are
therefore the same as a single-process run with the same seed and batch budget::

    torchrun --standalone --nproc-per-node 4 -m moldiff.cli -- sample --num 100000 --device cuda --out big.sdf

(the ``--`` keeps torchrun from reading ``--num`` as an abbreviation of its own ``--numa-binding``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a sharded run (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the output (rank 0)."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Shard:
        """The shard described by the environment; a plain process is ``Shard(0, 1, 0)``.

        >>> Shard.from_env() if "WORLD_SIZE" not in os.environ else Shard()
        Shard(rank=0, world_size=1, local_rank=0)
        """
        try:
            shard = cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError:
            raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        if shard.world_size < 1 or not 0 <= shard.rank < shard.world_size:
            raise ValueError(f"bad torchrun environment: RANK={shard.rank}, WORLD_SIZE={shard.world_size}")
        return shard


def resolve_device(device: str, shard: Shard | None = None) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` as a device: the one resolver of sampling and training alike.

    ``auto`` is CUDA when available, else the CPU; under ``torchrun`` (``shard``) plain ``cuda``
    means ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: unknown device, or CUDA requested where none is available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu")
        index = dev.index if dev.index is not None else (shard.local_rank if shard else 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"no CUDA device {index} (this machine has {torch.cuda.device_count()})")
        dev = torch.device("cuda", index)
    return dev


def init_sharding(device: torch.device) -> Shard:
    """Join the process group of a ``torchrun`` launch (NCCL on CUDA, gloo on CPU); no-op otherwise."""
    shard = Shard.from_env()
    if shard.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return shard


def gather_in_order(own: Iterable[tuple[int, T]], shard: Shard) -> Iterator[T]:
    """Reassemble sharded batches on rank 0, in batch order.

    ``own`` yields this rank's ``(k, item)`` with ``k = rank, rank + W, rank + 2W, ...``. In each
    round every rank contributes its next batch (or nothing once it has run out) and rank 0 yields
    the round's items by ``k``. Other ranks yield nothing but must iterate to the end, since each
    round is a collective call. With one process this is ``item for _, item in own``.
    """
    if shard.world_size == 1:
        for _, item in own:
            yield item
        return
    it = iter(own)
    while True:
        mine: tuple[int, Any] | None = next(it, None)
        gathered: list[Any] | None = [None] * shard.world_size if shard.is_main else None
        dist.gather_object(mine, gathered, dst=0)
        # rank 0 knows whether anyone is left; share it so every rank stops in the same round
        flag = [bool(gathered and any(g is not None for g in gathered))]
        dist.broadcast_object_list(flag, src=0)
        if not flag[0]:
            return
        if shard.is_main:
            for _, item in sorted((g for g in gathered if g is not None), key=lambda g: g[0]):
                yield item
