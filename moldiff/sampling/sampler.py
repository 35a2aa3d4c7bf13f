"""Reverse-process samplers over a trained :class:`EquivariantDiffusion`.

Molecules are sampled as a sparse batch (no padding). Sampling with ``S < T`` steps walks a
sub-sequence of the ``T + 1`` integer timesteps; the ancestral transition ``p(z_s | z_t)`` is exact
for any ``s < t``, so no retraining is needed. Besides the ancestral sampler there are the
deterministic DDIM, the second-order DPM-Solver++(2M) and its stochastic variant SDE-DPM-Solver++(2M)
(:mod:`moldiff.sampling.solvers`), meant for fewer steps. Every sampler is reproducible from a seed.

Large runs go through :meth:`Sampler.iter_batches`: molecules are packed, in input order, into
batches within an atom (and edge) budget (:func:`plan_batches`, sized from free GPU memory by
:func:`auto_batch_budget`); batch ``k`` is seeded with :func:`batch_seed`, so the molecules a seed
produces do not depend on how many processes share the work (``rank`` / ``world_size``, see
:mod:`moldiff.sampling.sharding`). A batch that still runs out of GPU memory is split in halves
and retried instead of failing the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.geometry import remove_mean, sample_zero_com_gaussian
from moldiff.sampling.solvers import SOLVERS, grid_gammas, solve

#: Registered sampler names (the CLI and tests parametrize from this tuple).
SAMPLERS: tuple[str, ...] = ("ancestral", *SOLVERS)

#: Default atom budget of one sampling batch on the CPU (:func:`auto_batch_budget`).
DEFAULT_MAX_ATOMS_PER_BATCH = 4096

#: Bytes of GPU memory budgeted per directed edge and hidden channel when sizing a batch: the float32
#: edge MLP keeps about eight ``[E, hidden]`` tensors alive at its peak (two linear layers, their
#: activations, the attention gate and the coordinate MLP). Deliberately generous: an over-large
#: batch still does not fail (it is split on out-of-memory), it only costs a retry.
_BYTES_PER_EDGE_CHANNEL = 4 * 8

#: Fraction of the free GPU memory a batch may plan to use.
_GPU_MEMORY_FRACTION = 0.6


@dataclass
class SampleOutput:
    """Sampled molecules, sparse.

    Attributes:
        pos: ``[N, 3]`` positions (Å).
        types: ``[N]`` atom-type index into the model's vocabulary.
        charges: ``[N]`` rounded charge channel (atomic number), zeros if the model has none.
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

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-molecule ``(types [n], pos [n, 3])`` on the CPU, in order."""
        counts = torch.bincount(self.batch.cpu(), minlength=self.num_graphs).tolist()
        types, pos = torch.split(self.types.cpu(), counts), torch.split(self.pos.cpu(), counts)
        return list(zip(types, pos, strict=True))


def timestep_grid(timesteps: int, steps: int) -> torch.Tensor:
    """Decreasing integer timesteps ``T = t_0 > ... > t_S = 0`` for ``S`` steps.

    >>> timestep_grid(1000, 4).tolist()
    [1000, 750, 500, 250, 0]
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and T={timesteps}, got {steps}")
    return torch.round(torch.linspace(timesteps, 0, steps + 1)).long()


EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


def concat_outputs(parts: Sequence[SampleOutput]) -> SampleOutput:
    """One :class:`SampleOutput` (CPU tensors) holding the molecules of ``parts`` in order."""
    offsets = torch.cumsum(torch.tensor([0] + [p.num_graphs for p in parts[:-1]]), 0).tolist()
    return SampleOutput(
        pos=torch.cat([p.pos.cpu() for p in parts]), types=torch.cat([p.types.cpu() for p in parts]),
        charges=torch.cat([p.charges.cpu() for p in parts]),
        batch=torch.cat([p.batch.cpu() + o for p, o in zip(parts, offsets, strict=True)]),
        num_graphs=sum(p.num_graphs for p in parts),
    )


class Sampler:
    """Draws molecules from a diffusion model.

    Args:
        process: the trained diffusion process.
    """

    def __init__(self, process: EquivariantDiffusion) -> None:
        self.process = process

    @torch.no_grad()
    def sample(
        self, num_atoms: torch.Tensor | list[int], steps: int | None = None, seed: int | None = 0,
        context: torch.Tensor | None = None, method: str = "ancestral", eps_fn: EpsFn | None = None,
        keep_chain: int = 0, progress: bool = False, device: torch.device | str | None = None,
        eta: float = 0.0, z_T: tuple[torch.Tensor, torch.Tensor] | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> SampleOutput:
        """Sample one molecule per entry of ``num_atoms``.

        Args:
            num_atoms: ``[B]`` atom counts.
            steps: number of denoising steps (default ``T``).
            seed: RNG seed (``None``: non-deterministic).
            context: ``[B, C]`` normalised conditioning values, or ``None``.
            method: one of :data:`SAMPLERS` (``ancestral``, ``ddim``, ``dpm2``).
            eps_fn: optional network override ``(z_pos, z_h, t) -> eps`` (e.g. guidance).
            keep_chain: keep this many evenly spaced snapshots of the trajectory.
            progress: show a tqdm bar over steps.
            device: where to run (default: the model's device).
            eta: DDIM stochasticity (``ddim`` only): 0 deterministic, 1 ancestral variance.
            z_T: optional initial state ``(pos [N, 3] zero-CoM, h [N, F])``; drawn from the seed
                when ``None``. With ``ddim`` (``eta = 0``) and ``dpm2`` the trajectory is then a
                deterministic function of ``z_T``; only the final ``p(x | z_0)`` draw (std
                ``sigma_0 / alpha_0``, about 0.003) uses the seed.
            on_step: called after every denoising step (e.g. to advance an outer progress bar).

        Returns:
            :class:`SampleOutput`.
        """
        if method not in SAMPLERS:
            raise ValueError(f"unknown sampler {method!r}; allowed: {list(SAMPLERS)}")
        if eta != 0.0 and method != "ddim":
            raise ValueError(f"eta is a ddim option; got eta={eta} with method {method!r}")
        proc = self.process
        T = proc.timesteps
        steps = T if steps is None else int(steps)
        grid = timestep_grid(T, steps)
        if device is None:
            device = next(proc.parameters()).device
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
        if num_atoms.ndim != 1 or num_atoms.numel() == 0 or int(num_atoms.min()) < 1:
            raise ValueError("num_atoms must be a non-empty 1-D list of positive atom counts")
        B = int(num_atoms.numel())
        batch = torch.repeat_interleave(torch.arange(B), num_atoms).to(device)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        dtype = next(proc.parameters()).dtype
        if context is not None:
            context = context.to(device=device, dtype=dtype)

        self_cond: list = [None]  # a self-conditioned denoiser reads its previous clean estimate

        def eps_at(zp: torch.Tensor, zh: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if eps_fn is not None:
                return eps_fn(zp, zh, t)
            if not getattr(proc, "self_conditioning", False):
                return proc.denoise(zp, zh, t, batch, context)
            eps = proc.denoise(zp, zh, t, batch, context, self_cond=self_cond[0])
            self_cond[0] = proc.x0_from_eps(zp, zh, eps, t, batch)
            return eps

        categorical = getattr(proc, "type_process", None) is not None
        if categorical and eps_fn is not None:
            raise ValueError("guidance / eps_fn is not supported with categorical atom types")
        norm_h = proc.norm_values[1]
        types_now: list[torch.Tensor] = []  # categorical: current one-hot types / norm_h (network input)

        def net_at(zp: torch.Tensor, zh: torch.Tensor, t: torch.Tensor,
                   s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            """Noise prediction; with categorical types also draws the types at ``s`` from the logits."""
            if not categorical:
                return eps_at(zp, zh, t)
            eps_pos, logits = eps_at(zp, types_now[0], t)
            if s is not None:
                types_now[0] = proc.reverse_types(types_now[0] * norm_h, logits, t, s, batch, gen) / norm_h
            return eps_pos, torch.zeros_like(zh)

        if z_T is None:
            z_pos = sample_zero_com_gaussian(batch.cpu(), B, gen, dtype).to(device)
            z_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen, dtype=dtype).to(device)
        else:
            if z_T[0].shape != (batch.shape[0], 3) or z_T[1].shape != (batch.shape[0], proc.feature_dim):
                n_at = batch.shape[0]
                raise ValueError(f"z_T must be shaped ([{n_at}, 3], [{n_at}, {proc.feature_dim}])")
            z_pos = remove_mean(z_T[0].to(device=device, dtype=dtype), batch, B)
            z_h = z_T[1].to(device=device, dtype=dtype)
        if categorical:
            z_h = proc.type_process.prior_sample(batch.shape[0], generator=gen, dtype=dtype).to(device) / norm_h
            types_now.append(z_h)
        chain = [] if keep_chain else None
        keep_at = set(torch.linspace(0, steps - 1, keep_chain).round().long().tolist() if keep_chain else [])
        if method == "ancestral":
            it = range(steps)
            if progress:
                it = tqdm(it, desc="sampling", unit="step", leave=False)
            for k in it:
                t_val, s_val = int(grid[k]), int(grid[k + 1])
                t = torch.full((B,), t_val / T, dtype=dtype, device=device)
                s = torch.full((B,), s_val / T, dtype=dtype, device=device)
                noise = tuple(x.to(device) for x in proc.sample_noise(batch.cpu(), B, dtype, gen))
                z_pos, z_h = proc.p_zs_given_zt(
                    z_pos, z_h, t, s, batch, B, context, noise=noise, eps=net_at(z_pos, z_h, t, s)
                )
                if categorical:
                    z_h = types_now[0]
                if chain is not None and k in keep_at:
                    chain.append((z_pos.cpu().clone(), z_h[:, : proc.num_classes].argmax(1).cpu()))
                if on_step is not None:
                    on_step()
        else:
            bar = tqdm(total=steps, desc=f"sampling ({method})", unit="step", leave=False,
                       disable=not progress)

            def eps_k(z: tuple[torch.Tensor, ...], k: int) -> tuple[torch.Tensor, torch.Tensor]:
                t_k = torch.full((B,), int(grid[k]) / T, dtype=dtype, device=device)
                s_k = torch.full((B,), int(grid[k + 1]) / T, dtype=dtype, device=device)
                return net_at(z[0], z[1], t_k, s_k)

            def noise_k(k: int) -> tuple[torch.Tensor, ...]:
                return tuple(x.to(device) for x in proc.sample_noise(batch.cpu(), B, dtype, gen))

            def after_step(k: int, z: tuple[torch.Tensor, ...]) -> None:
                bar.update(1)
                if on_step is not None:
                    on_step()
                if chain is not None and k in keep_at:
                    zh = types_now[0] if categorical else z[1]
                    chain.append((z[0].cpu().clone(), zh[:, : proc.num_classes].argmax(1).cpu()))

            z_pos, z_h = solve(
                method, (z_pos, z_h), eps_k, grid_gammas(proc.schedule, grid), eta=eta, noise_fn=noise_k,
                project=lambda z: (remove_mean(z[0], batch, B), z[1]), callback=after_step,
            )
            bar.close()
            if categorical:
                z_h = types_now[0]
        t0 = torch.zeros(B, dtype=dtype, device=device)
        pos, types, charges = proc.sample_p_xh_given_z0(
            z_pos, z_h, batch, B, context, generator=gen, eps=net_at(z_pos, z_h, t0)
        )
        return SampleOutput(pos=pos, types=types, charges=charges, batch=batch, num_graphs=B, chain=chain)

    def iter_batches(
        self, num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int | None = None,
        max_edges_per_batch: int | None = None, max_graphs_per_batch: int | None = None, seed: int | None = 0,
        context: torch.Tensor | None = None, eps_fn_for: Callable[[slice], EpsFn | None] | None = None,
        rank: int = 0, world_size: int = 1, progress: bool = False, **kwargs,
    ) -> Iterator[tuple[int, slice, SampleOutput]]:
        """Sample many molecules batch by batch, in input order, within a memory budget.

        Batches follow :func:`plan_batches`; batch ``k`` is seeded with :func:`batch_seed` and runs on
        the process with ``rank == k % world_size``. Every rank plans the same batches, so the
        molecules do not depend on ``world_size``; only the atom/edge/molecule budgets regroup them.
        A batch that runs out of memory is split in halves (seeds ``2 s + 1`` and ``2 s + 2`` for
        a batch seeded ``s``) and later batches are pre-split to the size that fitted, with a warning.

        Args:
            num_atoms: ``[B]`` atom counts.
            max_atoms_per_batch: atom budget (``None``: :func:`auto_batch_budget` for the device).
            max_edges_per_batch: edge budget (``None`` with ``max_atoms_per_batch=None``: automatic).
            max_graphs_per_batch: at most this many molecules per batch.
            seed: base seed (``None``: non-deterministic).
            context: ``[B, C]`` conditioning, sliced per batch.
            eps_fn_for: ``slice -> eps_fn`` for a batch's molecules (e.g. per-batch guidance), or ``None``.
            rank: this process's shard (``0 <= rank < world_size``).
            world_size: number of processes sharing the batches.
            progress: a tqdm bar over the denoising steps of this rank's batches (it advances every
                step, not only when a batch finishes), with the molecules done as a postfix.
            **kwargs: passed to :meth:`sample` (``steps``, ``method``, ``eta``, ``eps_fn``, ``device`` ...);
                ``keep_chain`` and ``z_T`` are not supported here.

        Yields:
            ``(k, slice, output)`` for this rank's batches, ``k`` increasing; ``output`` on the CPU.
        """
        if kwargs.get("keep_chain") or kwargs.get("z_T") is not None:
            raise ValueError("batched sampling does not support keep_chain or z_T; call sample() instead")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
        if max_atoms_per_batch is None:
            device = kwargs.get("device") or next(self.process.parameters()).device
            max_atoms_per_batch, auto_edges = auto_batch_budget(self.process, device)
            max_edges_per_batch = max_edges_per_batch or auto_edges
        plan = plan_batches(num_atoms, max_atoms_per_batch, max_edges_per_batch, max_graphs_per_batch)
        mine = [(k, sl) for k, sl in enumerate(plan) if k % world_size == rank]
        total = sum(sl.stop - sl.start for _, sl in mine)
        fits: list[int] = []  # after an out-of-memory error: the atom count known to fit
        steps = int(kwargs.get("steps") or self.process.timesteps)
        with tqdm(total=len(mine) * steps, desc="sampling", unit="step", disable=not progress) as bar:
            done = 0
            bar.set_postfix_str(f"0/{total} molecules")
            step_kwargs = {**kwargs, "on_step": (lambda: bar.update(1)) if progress else kwargs.get("on_step")}
            for k, sl in mine:
                start = bar.n
                out = self._sample_fitting(num_atoms, sl, batch_seed(seed, k), context, eps_fn_for, step_kwargs,
                                           fits)
                if bar.n - start != steps:  # an out-of-memory split ran the batch in parts: count it once
                    bar.n = start + steps
                    bar.refresh()
                done += sl.stop - sl.start
                bar.set_postfix_str(f"{done}/{total} molecules")
                yield k, sl, out

    def _sample_fitting(
        self, num_atoms: torch.Tensor, sl: slice, seed: int | None, context: torch.Tensor | None,
        eps_fn_for: Callable[[slice], EpsFn | None] | None, kwargs: dict, fits: list[int],
    ) -> SampleOutput:
        """:meth:`sample` for molecules ``sl``; on out-of-memory, halves and retries (see :meth:`iter_batches`)."""
        n_mols, n_atoms = sl.stop - sl.start, int(num_atoms[sl].sum())
        if not fits or n_atoms <= fits[0] or n_mols == 1:
            try:
                eps_fn = eps_fn_for(sl) if eps_fn_for is not None else kwargs.get("eps_fn")
                out = self.sample(num_atoms[sl], seed=seed, context=None if context is None else context[sl],
                                  **{**kwargs, "eps_fn": eps_fn})
                return _to_cpu(out)
            except torch.OutOfMemoryError:
                if n_mols == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                fits[:] = [min([n_atoms // 2, *fits])]
                warnings.warn(f"out of memory sampling a batch of {n_atoms} atoms; splitting it and later batches "
                              f"to <= {fits[0]} atoms (these batches draw different noise)", stacklevel=3)
        mid = sl.start + n_mols // 2
        halves = [slice(sl.start, mid), slice(mid, sl.stop)]
        seeds = [None, None] if seed is None else [2 * seed + 1, 2 * seed + 2]
        return concat_outputs([self._sample_fitting(num_atoms, h, s, context, eps_fn_for, kwargs, fits)
                               for h, s in zip(halves, seeds, strict=True)])

    def sample_batched(
        self, num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int | None = None,
        max_edges_per_batch: int | None = None, seed: int | None = 0, context: torch.Tensor | None = None,
        **kwargs,
    ) -> SampleOutput:
        """All molecules of :meth:`iter_batches` (single process) as one :class:`SampleOutput` in input order.

        Batch ``k`` uses seed :func:`batch_seed` ``(seed, k)``, so results are reproducible for a
        given seed *and* budget; a different budget regroups molecules and draws different noise.

        Args:
            num_atoms: ``[B]`` atom counts.
            max_atoms_per_batch: atom budget per batch (``None``: automatic for the device).
            max_edges_per_batch: optional edge budget per batch.
            seed: base seed (``None``: non-deterministic).
            context: ``[B, C]`` conditioning, sliced per batch.
            **kwargs: passed to :meth:`iter_batches` / :meth:`sample`.

        Returns:
            One :class:`SampleOutput` holding all molecules in input order (CPU tensors).
        """
        parts = [out for _, _, out in self.iter_batches(
            num_atoms, max_atoms_per_batch, max_edges_per_batch, seed=seed, context=context, **kwargs)]
        return concat_outputs(parts)


def _to_cpu(out: SampleOutput) -> SampleOutput:
    """``out`` with its tensors moved to the CPU (the chain is dropped)."""
    return SampleOutput(pos=out.pos.cpu(), types=out.types.cpu(), charges=out.charges.cpu(), batch=out.batch.cpu(),
                        num_graphs=out.num_graphs)
