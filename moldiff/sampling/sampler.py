"""Reverse-process samplers over a trained :class:`EquivariantDiffusion`.

Molecules are sampled as a sparse batch (no padding). Sampling with ``S < T`` steps walks a
sub-sequence of the ``T + 1`` integer timesteps; the ancestral transition ``p(z_s | z_t)`` is exact
for any ``s < t``, so no retraining is needed. Every sampler is reproducible from a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.geometry import sample_zero_com_gaussian

#: Registered sampler names (the CLI and tests parametrize from this tuple).
SAMPLERS: tuple[str, ...] = ("ancestral",)


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
        return list(zip(torch.split(self.types.cpu(), counts), torch.split(self.pos.cpu(), counts)))


def timestep_grid(timesteps: int, steps: int) -> torch.Tensor:
    """Decreasing integer timesteps ``T = t_0 > ... > t_S = 0`` for ``S`` steps.

    >>> timestep_grid(1000, 4).tolist()
    [1000, 750, 500, 250, 0]
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and T={timesteps}, got {steps}")
    return torch.round(torch.linspace(timesteps, 0, steps + 1)).long()


EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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
    ) -> SampleOutput:
        """Sample one molecule per entry of ``num_atoms``.

        Args:
            num_atoms: ``[B]`` atom counts.
            steps: number of denoising steps (default ``T``).
            seed: RNG seed (``None``: non-deterministic).
            context: ``[B, C]`` normalised conditioning values, or ``None``.
            method: one of :data:`SAMPLERS`.
            eps_fn: optional network override ``(z_pos, z_h, t) -> eps`` (e.g. guidance).
            keep_chain: keep this many evenly spaced snapshots of the trajectory.
            progress: show a tqdm bar over steps.
            device: where to run (default: the model's device).

        Returns:
            :class:`SampleOutput`.
        """
        if method not in SAMPLERS:
            raise ValueError(f"unknown sampler {method!r}; allowed: {list(SAMPLERS)}")
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

        z_pos = sample_zero_com_gaussian(batch.cpu(), B, gen, dtype).to(device)
        z_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen, dtype=dtype).to(device)
        chain = [] if keep_chain else None
        keep_at = set(torch.linspace(0, steps - 1, keep_chain).round().long().tolist()) if keep_chain else set()
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
        t0 = torch.zeros(B, dtype=dtype, device=device)
        pos, types, charges = proc.sample_p_xh_given_z0(
            z_pos, z_h, batch, B, context, generator=gen, eps=eps_at(z_pos, z_h, t0)
        )
        return SampleOutput(pos=pos, types=types, charges=charges, batch=batch, num_graphs=B, chain=chain)
