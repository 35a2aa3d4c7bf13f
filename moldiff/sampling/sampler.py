"""Reverse-process samplers over a trained :class:`EquivariantDiffusion`.

Molecules are sampled as a sparse batch (no padding). Sampling with ``S < T`` steps walks a
sub-sequence of the ``T + 1`` integer timesteps; the ancestral transition ``p(z_s | z_t)`` is exact
for any ``s < t``, so no retraining is needed. Besides the ancestral sampler, the deterministic
DDIM and the second-order DPM-Solver++(2M) (:mod:`moldiff.sampling.solvers`) reach comparable
quality in far fewer steps. Every sampler is reproducible from a seed, and
:meth:`Sampler.sample_batched` bounds memory by packing molecules into batches of at most
``max_atoms_per_batch`` atoms (and optionally ``max_edges_per_batch`` edges).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.geometry import remove_mean, sample_zero_com_gaussian
from moldiff.sampling.solvers import SOLVERS, grid_gammas, solve

#: Registered sampler names (the CLI and tests parametrize from this tuple).
SAMPLERS: tuple[str, ...] = ("ancestral", *SOLVERS)

#: Default atom budget of one sampling batch (:meth:`Sampler.sample_batched`).
DEFAULT_MAX_ATOMS_PER_BATCH = 4096


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


def plan_batches(
    num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
    max_edges_per_batch: int | None = None,
) -> list[slice]:
    """Split molecules, in input order, into consecutive batches within an atom (and edge) budget.

    A batch holds at most ``max_atoms_per_batch`` atoms and at most ``max_edges_per_batch``
    directed edges (``n (n - 1)`` per molecule, the fully connected graph of the denoiser). A single
    molecule larger than a budget gets a batch of its own.

    Args:
        num_atoms: ``[B]`` atom counts.
        max_atoms_per_batch: atom budget per batch.
        max_edges_per_batch: edge budget per batch (``None``: no edge budget).

    Returns:
        Slices into ``num_atoms``; concatenated they cover ``0..B-1`` in order.

    >>> plan_batches([10, 10, 10, 25, 3], max_atoms_per_batch=20)
    [slice(0, 2, None), slice(2, 3, None), slice(3, 4, None), slice(4, 5, None)]
    """
    if max_atoms_per_batch < 1 or (max_edges_per_batch is not None and max_edges_per_batch < 1):
        raise ValueError("max_atoms_per_batch and max_edges_per_batch must be >= 1")
    counts = torch.as_tensor(num_atoms, dtype=torch.long).tolist()
    out, start, atoms, edges = [], 0, 0, 0
    for i, n in enumerate(counts):
        e = n * (n - 1)
        too_many_edges = max_edges_per_batch is not None and edges + e > max_edges_per_batch
        if (atoms + n > max_atoms_per_batch or too_many_edges) and i > start:
            out.append(slice(start, i))
            start, atoms, edges = i, 0, 0
        atoms, edges = atoms + n, edges + e
    if counts:
        out.append(slice(start, len(counts)))
    return out


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

        def eps_at(zp: torch.Tensor, zh: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if eps_fn is not None:
                return eps_fn(zp, zh, t)
            return proc.denoise(zp, zh, t, batch, context)

        if z_T is None:
            z_pos = sample_zero_com_gaussian(batch.cpu(), B, gen, dtype).to(device)
            z_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen, dtype=dtype).to(device)
        else:
            if z_T[0].shape != (batch.shape[0], 3) or z_T[1].shape != (batch.shape[0], proc.feature_dim):
                n_at = batch.shape[0]
                raise ValueError(f"z_T must be shaped ([{n_at}, 3], [{n_at}, {proc.feature_dim}])")
            z_pos = remove_mean(z_T[0].to(device=device, dtype=dtype), batch, B)
            z_h = z_T[1].to(device=device, dtype=dtype)
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
                    z_pos, z_h, t, s, batch, B, context, noise=noise, eps=eps_at(z_pos, z_h, t)
                )
                if chain is not None and k in keep_at:
                    chain.append((z_pos.cpu().clone(), z_h[:, : proc.num_classes].argmax(1).cpu()))
        else:
            bar = tqdm(total=steps, desc=f"sampling ({method})", unit="step", leave=False,
                       disable=not progress)

            def eps_k(z: tuple[torch.Tensor, ...], k: int) -> tuple[torch.Tensor, torch.Tensor]:
                return eps_at(z[0], z[1], torch.full((B,), int(grid[k]) / T, dtype=dtype, device=device))

            def noise_k(k: int) -> tuple[torch.Tensor, ...]:
                return tuple(x.to(device) for x in proc.sample_noise(batch.cpu(), B, dtype, gen))

            def after_step(k: int, z: tuple[torch.Tensor, ...]) -> None:
                bar.update(1)
                if chain is not None and k in keep_at:
                    chain.append((z[0].cpu().clone(), z[1][:, : proc.num_classes].argmax(1).cpu()))

            z_pos, z_h = solve(
                method, (z_pos, z_h), eps_k, grid_gammas(proc.schedule, grid), eta=eta, noise_fn=noise_k,
                project=lambda z: (remove_mean(z[0], batch, B), z[1]), callback=after_step,
            )
            bar.close()
        t0 = torch.zeros(B, dtype=dtype, device=device)
        pos, types, charges = proc.sample_p_xh_given_z0(
            z_pos, z_h, batch, B, context, generator=gen, eps=eps_at(z_pos, z_h, t0)
        )
        return SampleOutput(pos=pos, types=types, charges=charges, batch=batch, num_graphs=B, chain=chain)

    def sample_batched(
        self, num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
        max_edges_per_batch: int | None = None, seed: int | None = 0, context: torch.Tensor | None = None,
        **kwargs,
    ) -> SampleOutput:
        """Sample many molecules in memory-bounded batches (:func:`plan_batches`); input order is kept.

        Batch ``k`` uses seed ``seed * 100003 + k`` (the convention of
        :meth:`moldiff.pipeline.MolDiff.sample_raw`), so results are reproducible for a given seed
        *and* budget; a different budget regroups molecules and draws different noise.

        Args:
            num_atoms: ``[B]`` atom counts.
            max_atoms_per_batch: atom budget per batch.
            max_edges_per_batch: optional edge budget per batch.
            seed: base seed (``None``: non-deterministic).
            context: ``[B, C]`` conditioning, sliced per batch.
            **kwargs: passed to :meth:`sample` (``steps``, ``method``, ``eta``, ``eps_fn``, ``device`` ...);
                ``keep_chain`` and ``z_T`` are not supported here.

        Returns:
            One :class:`SampleOutput` holding all molecules in input order (CPU tensors).
        """
        if kwargs.get("keep_chain") or kwargs.get("z_T") is not None:
            raise ValueError("sample_batched does not support keep_chain or z_T; call sample() instead")
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
        parts = []
        for k, sl in enumerate(plan_batches(num_atoms, max_atoms_per_batch, max_edges_per_batch)):
            parts.append(self.sample(
                num_atoms[sl], seed=None if seed is None else int(seed) * 100003 + k,
                context=None if context is None else context[sl], **kwargs,
            ))
        offsets = torch.cumsum(torch.tensor([0] + [p.num_graphs for p in parts[:-1]]), 0).tolist()
        return SampleOutput(
            pos=torch.cat([p.pos.cpu() for p in parts]), types=torch.cat([p.types.cpu() for p in parts]),
            charges=torch.cat([p.charges.cpu() for p in parts]),
            batch=torch.cat([p.batch.cpu() + o for p, o in zip(parts, offsets, strict=True)]),
            num_graphs=int(num_atoms.numel()),
        )
