"""Reverse-process samplers over a trained :class:`EquivariantDiffusion`: the loop, nothing else.

Molecules are sampled as a sparse batch (no padding). Sampling with ``S < T`` steps walks a
sub-sequence of the ``T + 1`` integer timesteps; the ancestral transition ``p(z_s | z_t)`` is exact
for any ``s < t``, so no retraining is needed. Every sampler is a solver of
:mod:`moldiff.sampling.solvers`: EDM's ancestral sampler (which calls back into the process for its
exact step), the deterministic DDIM, the second-order DPM-Solver++(2M) and its stochastic variant
SDE-DPM-Solver++(2M), meant for fewer steps. Every sampler is reproducible from a seed. The network
call and what it reads and drives beside the positions (categorical atom types, the bond channel, the
self-conditioning estimate) is :class:`~moldiff.sampling.channels.DiscreteChannels`, shared with inpainting.
Two sampler-side options apply to every solver: noise injection before each step (``churn``,
:mod:`moldiff.sampling.churn`) and the last step as the network's clean estimate (``final="mean"``).

:class:`Sampler` draws one batch; how to sample (method, steps, eta, seed, budgets) is one frozen
:class:`~moldiff.sampling.config.SamplingConfig`. Large runs go through
:mod:`moldiff.sampling.batching` (memory budget, out-of-memory split-and-retry, sharding by rank),
reached here through :meth:`Sampler.iter_batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.geometry import remove_mean, sample_zero_com_gaussian
from moldiff.sampling import batching
from moldiff.sampling.batching import (  # noqa: F401  (re-exported: inpainting, benchmarks and tests use them here)
    DEFAULT_MAX_ATOMS_PER_BATCH,
    auto_batch_budget,
    batch_seed,
    plan_batches,
)
from moldiff.sampling.channels import DiscreteChannels
from moldiff.sampling.churn import Churn, raised_grid
from moldiff.sampling.config import SamplingConfig
from moldiff.sampling.output import EpsFn, SampleOutput, concat_outputs  # noqa: F401  (re-exported)
from moldiff.sampling.solvers import SOLVERS, grid_gammas, solve

#: Registered sampler names, every one a solver (the CLI and tests parametrize from this tuple).
SAMPLERS: tuple[str, ...] = SOLVERS


#: Step spacings of :func:`timestep_grid` (``SamplingConfig.spacing``, ``moldiff sample --spacing``).
SPACINGS: tuple[str, ...] = ("uniform", "quadratic", "logsnr")


def timestep_grid(timesteps: int, steps: int, spacing: str = "uniform",
                  gamma_table: torch.Tensor | None = None) -> torch.Tensor:
    """Decreasing integer timesteps ``T = t_0 > ... > t_S = 0`` for ``S`` steps.

    ``spacing``: ``uniform`` in time (EDM, the default); ``quadratic``, ``t_k = T (1 - k/S)^2``
    (DDIM's quadratic grid: dense at low noise, where the geometry is fixed); ``logsnr``, uniform in
    ``log SNR = -gamma`` between ``gamma(T)`` and ``gamma(0)`` (DPM-Solver's grid; needs the
    schedule's ``gamma_table [T + 1]``). Rounded grids are made strictly decreasing (``t_k >=
    t_{k+1} + 1``), so every step moves.

    >>> timestep_grid(1000, 4).tolist()
    [1000, 750, 500, 250, 0]
    >>> timestep_grid(1000, 4, "quadratic").tolist()
    [1000, 562, 250, 62, 0]
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and T={timesteps}, got {steps}")
    if spacing == "uniform":
        return torch.round(torch.linspace(timesteps, 0, steps + 1)).long()
    if spacing == "quadratic":
        frac = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** 2
        grid = torch.round(frac * timesteps).long()
    elif spacing == "logsnr":
        if gamma_table is None or gamma_table.shape != (timesteps + 1,):
            raise ValueError(f"logsnr spacing needs the schedule's gamma table of {timesteps + 1} values")
        g = gamma_table.detach().cpu().to(torch.float64)
        targets = torch.linspace(float(g[-1]), float(g[0]), steps + 1, dtype=torch.float64)  # gamma rises with t
        grid = torch.searchsorted(g.contiguous(), targets).clamp(0, timesteps)
        grid[0], grid[-1] = timesteps, 0
    else:
        raise ValueError(f"unknown step spacing {spacing!r}; allowed: {list(SPACINGS)}")
    # strictly decreasing with t_0 = T and t_S = 0: clamp t_k into [S - k, T - k], then push up from the end
    k = torch.arange(steps + 1)
    grid = torch.minimum(torch.maximum(grid, steps - k), timesteps - k)
    for i in range(steps - 1, -1, -1):
        grid[i] = max(int(grid[i]), int(grid[i + 1]) + 1)
    return grid


def _clean_estimate(
    channels: DiscreteChannels, z_pos: torch.Tensor, z_h: torch.Tensor, t: torch.Tensor, eps_fn: EpsFn | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``final="mean"``: the network's clean estimate at ``t [B]``, no noise (the channels get its argmax).

    Returns:
        ``x0_pos [N, 3]`` (normalised, zero-CoM), ``x0_h [N, F]``, ``types [N]`` (argmax of the clean
        type logits, or of ``x0_h``'s one-hot for Gaussian types) and ``charges [N]`` (the rounded
        charge channel of ``x0_h``; zeros without one). With a bond channel the current bond classes
        become the argmax of the clean-bond logits.
    """
    proc, batch = channels.process, channels.batch
    num_graphs = int(batch.max()) + 1
    h_in = channels.types if channels.categorical else z_h
    if eps_fn is not None and not channels.categorical:
        out = eps_fn(z_pos, z_h, t)
    else:  # the channels' network call (guidance included for categorical types; self-conditioning updated)
        out = channels.denoise(z_pos, h_in, t)
    x0_pos, x0_h = proc.x0_from_eps(z_pos, h_in, out, t, batch)  # categorical: x0_h = softmax(logits) / norm
    x0_pos = remove_mean(x0_pos, batch, num_graphs)
    K = proc.num_classes
    types = x0_h[:, :K].argmax(1)
    if channels.categorical:
        channels.types = torch.nn.functional.one_hot(types, K).to(x0_h.dtype) / channels.norm_h
    if channels.has_bonds:
        channels.bonds = torch.nn.functional.one_hot(out[2].argmax(1), proc.bond_process.num_classes).to(x0_h.dtype)
    if proc.include_charges:
        charges = torch.round(x0_h[:, K] * proc.norm_values[2]).long()
    else:
        charges = torch.zeros_like(types)
    return x0_pos, x0_h, types, charges


def _config(config: SamplingConfig | None, method: str, steps: int | None, eta: float) -> SamplingConfig:
    """``config``, or one built from the loose ``method`` / ``steps`` / ``eta`` (not both)."""
    if config is None:
        return SamplingConfig(method=method, steps=steps, eta=eta, seed=None)
    if (method, steps, eta) != ("ancestral", None, 0.0):
        raise ValueError("pass either config=SamplingConfig(...) or method/steps/eta, not both")
    return config


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
        on_step: Callable[[], None] | None = None, *, config: SamplingConfig | None = None,
    ) -> SampleOutput:
        """Sample one molecule per entry of ``num_atoms`` (one batch).

        Args:
            num_atoms: ``[B]`` atom counts.
            steps: number of denoising steps (default ``T``).
            seed: RNG seed of this batch (``None``: non-deterministic).
            context: ``[B, C]`` normalised conditioning values, or ``None``.
            method: one of :data:`SAMPLERS` (``ancestral``, ``ddim``, ``dpm2``, ``dpm2sde``).
            eps_fn: optional network override ``(z_pos, z_h, t) -> eps`` (e.g. guidance).
            keep_chain: keep this many evenly spaced snapshots of the trajectory.
            progress: show a tqdm bar over steps.
            device: where to run (default: the model's device).
            eta: DDIM stochasticity (``ddim`` only): 0 deterministic, 1 ancestral variance.
            z_T: optional initial state ``(pos [N, 3] zero-CoM, h [N, F])``; drawn from the seed
                when ``None``. With ``ddim`` (``eta = 0``) and ``dpm2`` the trajectory is then a
                deterministic function of ``z_T``; only the final ``p(x | z_0)`` draw (std
                ``sigma_0 / alpha_0``, about 0.003) uses the seed (none with ``final="mean"``;
                ``churn > 0`` draws fresh noise before the steps).
            on_step: called after every denoising step (e.g. to advance an outer progress bar).
            config: method, steps and eta as one :class:`SamplingConfig` (instead of the three
                arguments), with its step spacing, noise injection (``churn``, ``churn_range``) and
                last step (``final``); its ``seed`` and budgets are the batching layer's, ``seed`` here is this batch's.

        Returns:
            :class:`SampleOutput`.
        """
        cfg = _config(config, method, steps, eta)
        proc = self.process
        T = proc.timesteps
        n_steps = cfg.num_steps(T)
        grid = timestep_grid(T, n_steps, cfg.spacing, proc.schedule.gamma_table)
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

        # the network call; categorical types, bond classes and the self-conditioning estimate as side state
        # (with categorical types an ``eps_fn``, e.g. guidance, replaces the network call inside the
        # channels, so that its type logits drive the type draws)
        categorical = bool(getattr(proc, "categorical_types", False))
        channels = DiscreteChannels(proc, batch, context, gen, net=eps_fn if categorical else None)

        def net_at(zp: torch.Tensor, zh: torch.Tensor, t: torch.Tensor,
                   s: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
            """Noise prediction at ``t``; categorical: also draws the types (and bonds) at ``s``."""
            return channels.predict(zp, zh, t, s) if eps_fn is None or categorical else eps_fn(zp, zh, t)

        if z_T is None:
            z_pos = sample_zero_com_gaussian(batch.cpu(), B, gen, dtype).to(device)
            z_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen, dtype=dtype).to(device)
        else:
            if z_T[0].shape != (batch.shape[0], 3) or z_T[1].shape != (batch.shape[0], proc.feature_dim):
                n_at = batch.shape[0]
                raise ValueError(f"z_T must be shaped ([{n_at}, 3], [{n_at}, {proc.feature_dim}])")
            z_pos = remove_mean(z_T[0].to(device=device, dtype=dtype), batch, B)
            z_h = z_T[1].to(device=device, dtype=dtype)
        channels.start(dtype, device)  # categorical types and bond classes from their priors
        if categorical:
            z_h = channels.types

        # churn: step k starts from the lifted timestep start[k] >= grid[k] (equal without churn)
        start = raised_grid(grid, proc.schedule.gamma_table, cfg.churn, cfg.churn_range)

        def time_at(k: int) -> torch.Tensor:
            return torch.full((B,), int(grid[k]) / T, dtype=dtype, device=device)

        def start_at(k: int) -> torch.Tensor:
            return torch.full((B,), int(start[k]) / T, dtype=dtype, device=device)

        def eps_k(z: tuple[torch.Tensor, ...], k: int) -> tuple[torch.Tensor, torch.Tensor]:
            return net_at(z[0], z[1], start_at(k), time_at(k + 1))

        def noise_k(k: int) -> tuple[torch.Tensor, ...]:
            return tuple(x.to(device) for x in proc.sample_noise(batch.cpu(), B, dtype, gen))

        def ancestral_step(k: int, z: tuple[torch.Tensor, ...], eps: tuple[torch.Tensor, ...],
                           noise: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            """The process's own ``p(z_s | z_t)`` (it re-centres the positions)."""
            zp, zh = proc.p_zs_given_zt(z[0], z[1], start_at(k), time_at(k + 1), batch, B, context, noise=noise,
                                        eps=eps)
            return zp, channels.types if categorical else zh

        gammas = grid_gammas(proc.schedule, grid)
        churn = None
        if cfg.churn > 0:  # the discrete channels jump forward with the positions: x_that ~ q(x_that | x_t)
            churn = Churn(grid_gammas(proc.schedule, start), noise_k,
                          on_raise=lambda k: channels.renoise(int(grid[k]) / T, int(start[k]) / T))

        chain = [] if keep_chain else None
        keep_at = set(torch.linspace(0, n_steps - 1, keep_chain).round().long().tolist() if keep_chain else [])
        bar = tqdm(total=n_steps, desc=f"sampling ({cfg.method})", unit="step", leave=False, disable=not progress)

        def after_step(k: int, z: tuple[torch.Tensor, ...]) -> None:
            bar.update(1)
            if on_step is not None:
                on_step()
            if chain is not None and k in keep_at:  # the chain, captured once for every solver
                zh = channels.types if categorical else z[1]
                chain.append((z[0].cpu().clone(), zh[:, : proc.num_classes].argmax(1).cpu()))

        def project(z: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return remove_mean(z[0], batch, B), z[1]

        mean = cfg.final == "mean"  # the last step is the network's clean estimate at grid point S - 1
        z_pos, z_h = solve(
            cfg.method, (z_pos, z_h), eps_k, gammas, eta=cfg.eta, noise_fn=noise_k, project=project,
            callback=after_step, step_fn=ancestral_step, churn=churn, num_steps=n_steps - 1 if mean else None,
        )
        if mean:
            k = n_steps - 1
            if churn is not None:
                z_pos, z_h = churn.apply(k, (z_pos, z_h), gammas, project)
            x0_pos, x0_h, types, charges = _clean_estimate(channels, z_pos, z_h, start_at(k), eps_fn)
            after_step(k, (x0_pos, x0_h))
            pos = x0_pos * proc.norm_values[0]
        else:
            if categorical:
                z_h = channels.types
            t0 = torch.zeros(B, dtype=dtype, device=device)
            pos, types, charges = proc.sample_p_xh_given_z0(
                z_pos, z_h, batch, B, context, generator=gen, eps=net_at(z_pos, z_h, t0)
            )
        bar.close()
        return SampleOutput(pos=pos, types=types, charges=charges, batch=batch, num_graphs=B, chain=chain,
                            **channels.bond_output())  # the bonds drawn at t = 0

    def iter_batches(
        self, num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int | None = None,
        max_edges_per_batch: int | None = None, max_graphs_per_batch: int | None = None, seed: int | None = 0,
        context: torch.Tensor | None = None, eps_fn_for: Callable[[slice], EpsFn | None] | None = None,
        rank: int = 0, world_size: int = 1, progress: bool = False, steps: int | None = None,
        method: str = "ancestral", eta: float = 0.0, eps_fn: EpsFn | None = None,
        device: torch.device | str | None = None, *, config: SamplingConfig | None = None,
    ) -> Iterator[tuple[int, slice, SampleOutput]]:
        """Sample many molecules batch by batch, in input order: :func:`moldiff.sampling.batching.iter_batches`.

        ``config`` holds method, steps, eta, seed and budgets; without it one is built from the
        loose arguments (``max_graphs_per_batch`` is its ``batch_size``).

        Yields:
            ``(k, slice, output)`` for this rank's batches, ``k`` increasing; ``output`` on the CPU.
        """
        loose = (max_atoms_per_batch, max_edges_per_batch, max_graphs_per_batch, seed, steps, method, eta)
        if config is None:
            config = SamplingConfig(method=method, steps=steps, eta=eta, seed=seed, batch_size=max_graphs_per_batch,
                                    max_atoms_per_batch=max_atoms_per_batch, max_edges_per_batch=max_edges_per_batch)
        elif loose != (None, None, None, 0, None, "ancestral", 0.0):
            raise ValueError("pass either config=SamplingConfig(...) or the loose sampling arguments, not both")
        return batching.iter_batches(self, num_atoms, config, context=context, eps_fn=eps_fn, eps_fn_for=eps_fn_for,
                                     rank=rank, world_size=world_size, progress=progress, device=device)

    def sample_batched(
        self, num_atoms: torch.Tensor | list[int], max_atoms_per_batch: int | None = None,
        max_edges_per_batch: int | None = None, seed: int | None = 0, context: torch.Tensor | None = None,
        steps: int | None = None, method: str = "ancestral", eta: float = 0.0, eps_fn: EpsFn | None = None,
        eps_fn_for: Callable[[slice], EpsFn | None] | None = None, device: torch.device | str | None = None,
        max_graphs_per_batch: int | None = None, *, config: SamplingConfig | None = None,
    ) -> SampleOutput:
        """All molecules of :meth:`iter_batches` (single process) as one :class:`SampleOutput` in input order.

        Batch ``k`` uses seed :func:`batch_seed` ``(seed, k)``, so results are reproducible for a
        given seed *and* budget; a different budget regroups molecules and draws different noise.

        Returns:
            One :class:`SampleOutput` holding all molecules in input order (CPU tensors).
        """
        parts = [out for _, _, out in self.iter_batches(
            num_atoms, max_atoms_per_batch, max_edges_per_batch, max_graphs_per_batch, seed=seed, context=context,
            eps_fn_for=eps_fn_for, steps=steps, method=method, eta=eta, eps_fn=eps_fn, device=device, config=config)]
        return concat_outputs(parts)
