"""Sampling many molecules: batches within a memory budget, out-of-memory split-and-retry, sharding by rank.

Molecules are packed, in input order, into batches within an atom (and edge) budget
(:func:`plan_batches`, sized from free GPU memory by :func:`auto_batch_budget`); batch ``k`` is
seeded with :func:`batch_seed`, so the molecules a seed produces do not depend on how many
processes share the work (``rank`` / ``world_size``, see :mod:`moldiff.sampling.sharding`). A batch
that still runs out of GPU memory is split in halves and retried instead of failing the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from moldiff.sampling.config import SamplingConfig
from moldiff.sampling.output import EpsFn, SampleOutput, concat_outputs

#: Default atom budget of one sampling batch on the CPU (:func:`auto_batch_budget`).
DEFAULT_MAX_ATOMS_PER_BATCH = 4096

#: Bytes of GPU memory budgeted per directed edge and hidden channel when sizing a batch: the float32
#: edge MLP keeps about eight ``[E, hidden]`` tensors alive at its peak (two linear layers, their
#: activations, the attention gate and the coordinate MLP). Deliberately generous: an over-large
#: batch still does not fail (it is split on out-of-memory), it only costs a retry.
_BYTES_PER_EDGE_CHANNEL = 4 * 8

#: Fraction of the free GPU memory a batch may plan to use.
_GPU_MEMORY_FRACTION = 0.6


class BatchSampler(Protocol):
    """What batching drives: a :class:`~moldiff.sampling.sampler.Sampler` (one batch per call)."""

    process: torch.nn.Module

    def sample(self, num_atoms: torch.Tensor, *, seed: int | None, context: torch.Tensor | None,
               eps_fn: EpsFn | None, device: Any, on_step: Callable[[], None] | None,
               config: SamplingConfig) -> SampleOutput:
        """Sample one batch of ``num_atoms`` molecules with ``config``'s method, steps and eta."""
        ...


def batch_seed(seed: int | None, k: int) -> int | None:
    """Seed of sampling batch ``k`` for a run seeded with ``seed`` (``None`` stays ``None``).

    >>> batch_seed(0, 2), batch_seed(1, 0), batch_seed(None, 3)
    (2, 100003, None)
    """
    return None if seed is None else int(seed) * 100003 + int(k)


def plan_batches(
    num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
    max_edges_per_batch: int | None = None, max_graphs_per_batch: int | None = None,
) -> list[slice]:
    """Split molecules, in input order, into consecutive batches within an atom (and edge) budget.

    A batch holds at most ``max_atoms_per_batch`` atoms, at most ``max_edges_per_batch`` directed
    edges (``n (n - 1)`` per molecule, the fully connected graph of the denoiser) and at most
    ``max_graphs_per_batch`` molecules. A single molecule larger than a budget gets a batch of its own.

    Args:
        num_atoms: ``[B]`` atom counts.
        max_atoms_per_batch: atom budget per batch.
        max_edges_per_batch: edge budget per batch (``None``: no edge budget).
        max_graphs_per_batch: molecules per batch (``None``: no limit).

    Returns:
        Slices into ``num_atoms``; concatenated they cover ``0..B-1`` in order.

    >>> plan_batches([10, 10, 10, 25, 3], max_atoms_per_batch=20)
    [slice(0, 2, None), slice(2, 3, None), slice(3, 4, None), slice(4, 5, None)]
    """
    for name, value in (("max_atoms_per_batch", max_atoms_per_batch), ("max_edges_per_batch", max_edges_per_batch),
                        ("max_graphs_per_batch", max_graphs_per_batch)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    counts = torch.as_tensor(num_atoms, dtype=torch.long).tolist()
    out, start, atoms, edges = [], 0, 0, 0
    for i, n in enumerate(counts):
        e = n * (n - 1)
        too_many_edges = max_edges_per_batch is not None and edges + e > max_edges_per_batch
        too_many_graphs = max_graphs_per_batch is not None and i - start >= max_graphs_per_batch
        if (atoms + n > max_atoms_per_batch or too_many_edges or too_many_graphs) and i > start:
            out.append(slice(start, i))
            start, atoms, edges = i, 0, 0
        atoms, edges = atoms + n, edges + e
    if counts:
        out.append(slice(start, len(counts)))
    return out


def auto_batch_budget(process: torch.nn.Module, device: torch.device | str) -> tuple[int, int | None]:
    """``(max_atoms_per_batch, max_edges_per_batch)`` for sampling ``process`` on ``device``.

    On the CPU a batch of :data:`DEFAULT_MAX_ATOMS_PER_BATCH` atoms already saturates throughput
    (``benchmarks/speed/bench_sampling.py``), so there is no edge budget. On CUDA the edge budget is a
    fraction of the free memory divided by the per-edge cost of the widest layer; the atom budget
    follows from it (QM9 molecules have about 17 edges per atom).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MAX_ATOMS_PER_BATCH, None
    free, _ = torch.cuda.mem_get_info(device)
    hidden = max((m.out_features for m in process.modules() if isinstance(m, torch.nn.Linear)), default=256)
    max_edges = max(1, int(_GPU_MEMORY_FRACTION * free / (hidden * _BYTES_PER_EDGE_CHANNEL)))
    return max(DEFAULT_MAX_ATOMS_PER_BATCH, max_edges // 8), max_edges


def iter_batches(
    sampler: BatchSampler, num_atoms: torch.Tensor | list[int], config: SamplingConfig,
    context: torch.Tensor | None = None, eps_fn: EpsFn | None = None,
    eps_fn_for: Callable[[slice], EpsFn | None] | None = None, rank: int = 0, world_size: int = 1,
    progress: bool = False, device: torch.device | str | None = None,
) -> Iterator[tuple[int, slice, SampleOutput]]:
    """Sample many molecules batch by batch, in input order, within ``config``'s memory budget.

    Batches follow :func:`plan_batches`; batch ``k`` is seeded with :func:`batch_seed` of
    ``config.seed`` and runs on the process with ``rank == k % world_size``. Every rank plans the
    same batches, so the molecules do not depend on ``world_size``; only the atom/edge/molecule
    budgets regroup them. A batch that runs out of memory is split in halves (seeds ``2 s + 1`` and
    ``2 s + 2`` for a batch seeded ``s``) and later batches are pre-split to the size that fitted,
    with a warning.

    Args:
        sampler: draws one batch (:meth:`moldiff.sampling.sampler.Sampler.sample`).
        num_atoms: ``[B]`` atom counts.
        config: method, steps, eta, seed and budgets (``max_atoms_per_batch=None``: automatic).
        context: ``[B, C]`` conditioning, sliced per batch.
        eps_fn: network override for every batch (``eps_fn_for`` takes precedence).
        eps_fn_for: ``slice -> eps_fn`` for a batch's molecules (e.g. per-batch guidance), or ``None``.
        rank: this process's shard (``0 <= rank < world_size``).
        world_size: number of processes sharing the batches.
        progress: a tqdm bar over the denoising steps of this rank's batches (it advances every
            step, not only when a batch finishes), with the molecules done as a postfix.
        device: where to run (default: the model's device).

    Yields:
        ``(k, slice, output)`` for this rank's batches, ``k`` increasing; ``output`` on the CPU.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
    steps = config.num_steps(sampler.process.timesteps)
    max_atoms, max_edges = config.max_atoms_per_batch, config.max_edges_per_batch
    if max_atoms is None:
        max_atoms, auto_edges = auto_batch_budget(sampler.process, device or next(sampler.process.parameters()).device)
        max_edges = max_edges or auto_edges
    plan = plan_batches(num_atoms, max_atoms, max_edges, config.batch_size)
    mine = [(k, sl) for k, sl in enumerate(plan) if k % world_size == rank]
    total = sum(sl.stop - sl.start for _, sl in mine)
    fits: list[int] = []  # after an out-of-memory error: the atom count known to fit
    with tqdm(total=len(mine) * steps, desc="sampling", unit="step", disable=not progress) as bar:
        done = 0
        bar.set_postfix_str(f"0/{total} molecules")

        def run(sl: slice, seed: int | None) -> SampleOutput:
            fn = eps_fn_for(sl) if eps_fn_for is not None else eps_fn
            return sampler.sample(num_atoms[sl], seed=seed, context=None if context is None else context[sl],
                                  eps_fn=fn, device=device, on_step=(lambda: bar.update(1)) if progress else None,
                                  config=config).cpu()

        for k, sl in mine:
            start = bar.n
            out = _sample_fitting(run, num_atoms, sl, batch_seed(config.seed, k), fits)
            if bar.n - start != steps:  # an out-of-memory split ran the batch in parts: count it once
                bar.n = start + steps
                bar.refresh()
            done += sl.stop - sl.start
            bar.set_postfix_str(f"{done}/{total} molecules")
            yield k, sl, out


def _sample_fitting(run: Callable[[slice, int | None], SampleOutput], num_atoms: torch.Tensor, sl: slice,
                    seed: int | None, fits: list[int]) -> SampleOutput:
    """``run(sl, seed)``; on out-of-memory, halves the molecules and retries (see :func:`iter_batches`)."""
    n_mols, n_atoms = sl.stop - sl.start, int(num_atoms[sl].sum())
    if not fits or n_atoms <= fits[0] or n_mols == 1:
        try:
            return run(sl, seed)
        except torch.OutOfMemoryError:
            if n_mols == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            fits[:] = [min([n_atoms // 2, *fits])]
            warnings.warn(f"out of memory sampling a batch of {n_atoms} atoms; splitting it and later batches "
                          f"to <= {fits[0]} atoms (these batches draw different noise)", stacklevel=4)
    mid = sl.start + n_mols // 2
    halves = [slice(sl.start, mid), slice(mid, sl.stop)]
    seeds = [None, None] if seed is None else [2 * seed + 1, 2 * seed + 2]
    return concat_outputs([_sample_fitting(run, num_atoms, h, s, fits) for h, s in zip(halves, seeds, strict=True)])
