"""Plain-PyTorch training loop for :class:`EquivariantDiffusion`.

AdamW, EMA, EDM's adaptive gradient clipping, validation NLL, periodic sampling with a quick
stability score, CSV log + loss plot, atomic checkpoints, exact resume,
and data-parallel training under ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from moldiff.checkpoint import grow_state_dict, load_checkpoint, load_state, save_checkpoint
from moldiff.conditioning import drop_context, with_keep_flags
from moldiff.config import ExperimentConfig, TrainConfig
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.evaluation.stability import stability_fractions
from moldiff.geometry import noise_aligner, rotate_batch
from moldiff.sampling.priors import NodeCountDistribution
from moldiff.sampling.sampler import Sampler
from moldiff.training.fragments import fragment_mask
from moldiff.types import DatasetStats, MolBatch

#: ``batches(epoch) -> iterator of MolBatch``; must be deterministic for a given epoch.
BatchFn = Callable[[int], Iterator[MolBatch]]

LOG_FIELDS = ("step", "epoch", "loss", "grad_norm", "clip_max", "mol_per_s", "elapsed_s",
              "val_nll", "atom_stability", "mol_stability")


class GradClipper:
    """EDM's adaptive clipping: ``max_norm = 1.5 mean + 2 std`` of the last 50 (clipped) norms."""

    def __init__(self, history: list[float] | None = None, maxlen: int = 50) -> None:
        self.queue: deque[float] = deque(history if history is not None else [3000.0], maxlen=maxlen)

    def __call__(self, params: list[torch.nn.Parameter]) -> tuple[float, float]:
        """Clip ``params``' gradients in place; returns ``(gradient norm, max_norm used)``."""
        q = np.asarray(self.queue, dtype=np.float64)
        max_norm = float(1.5 * q.mean() + 2 * q.std())
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm))
        self.queue.append(min(norm, max_norm))
        return norm, max_norm


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``p_ema <- decay p_ema + (1 - decay) p`` over parameters."""
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.mul_(decay).add_(p.detach(), alpha=1 - decay)


def ema_decay_at(decay: float, step: int, warmup: bool) -> float:
    """EMA decay after ``step`` optimiser steps: ``decay``, or with warm-up ``min(decay, (1 + step) / (10 + step))``.

    Without warm-up a fresh EMA keeps ``decay ** step`` of the random initial weights (62 % after
    470 steps at 0.999), which makes short runs look worse than their weights are.

    >>> ema_decay_at(0.999, 0, True), ema_decay_at(0.999, 20000, True), ema_decay_at(0.999, 0, False)
    (0.1, 0.999, 0.999)
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) under ``cfg.lr_schedule``.

    Constant until the last ``lr_decay_steps`` steps of ``max_steps`` (all of them when unset), then
    ``linear`` or ``cosine`` from ``lr`` down to ``lr_min``, reached at step ``max_steps``.

    >>> c = TrainConfig(lr=1.0, lr_schedule="linear", max_steps=10, lr_decay_steps=4)
    >>> [round(lr_at(c, s), 2) for s in (0, 6, 7, 8, 10)]
    [1.0, 1.0, 0.75, 0.5, 0.0]
    """
    if cfg.lr_schedule == "constant" or cfg.max_steps is None:
        return cfg.lr
    span = min(cfg.lr_decay_steps or cfg.max_steps, cfg.max_steps)
    frac = min(max((step - (cfg.max_steps - span)) / span, 0.0), 1.0)  # 0 before the decay, 1 at its end
    scale = 1.0 - frac if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * scale


def quick_stability(process: EquivariantDiffusion, elements: list[str], num_atoms: torch.Tensor, steps: int,
                    seed: int, context: torch.Tensor | None = None) -> tuple[float, float]:
    """Sample one molecule per entry of ``num_atoms`` and return EDM (atom, molecule) stability fractions."""
    out = Sampler(process).sample(num_atoms, steps=steps, seed=seed, context=context)
    return stability_fractions(([elements[i] for i in types.tolist()], pos.double().numpy())
                               for types, pos in out.split())


@dataclass
class TrainState:
    """Counters that, with the RNG states, make a resumed run continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val_nll: float = math.inf
    elapsed_s: float = 0.0


class Trainer:
    """Trains an :class:`EquivariantDiffusion` and writes ``RUN_DIR/{last,best}.pt``, ``log.csv``, ``loss.png``.

    Args:
        process: the model to train (its denoiser may be wrapped in DDP by the trainer).
        config: the experiment config (saved in every checkpoint).
        stats: dataset statistics stored in checkpoints (:class:`~moldiff.types.DatasetStats`, or its dict).
        train_batches: deterministic per-epoch batch iterator.
        val_batches: optional validation batch iterator (``epoch`` argument ignored).
        out_dir: run directory.
        device: torch device.
    """

    def __init__(self, process: EquivariantDiffusion, config: ExperimentConfig, stats: DatasetStats | dict[str, Any],
                 train_batches: BatchFn, out_dir: str | Path, val_batches: BatchFn | None = None,
                 device: str | torch.device = "cpu", progress: bool = True) -> None:
        self.cfg = config.train
        self.config = config
        self.stats = DatasetStats.from_dict(stats)
        self.device = torch.device(device)
        self.process = process.to(self.device)
        self.ema = copy.deepcopy(self.process).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        if self.cfg.compile:  # in place: state-dict keys unchanged; the EMA copy (sampling) stays eager
            self.process.denoiser.compile(dynamic=True)
        self.train_process = self.process
        if self.world > 1:
            ddp = torch.nn.parallel.DistributedDataParallel(self.process.denoiser)
            self.train_process = copy.copy(self.process)  # shares schedule and parameters ...
            self.train_process._modules = dict(self.process._modules)  # ... but not the module table, so
            self.train_process.denoiser = ddp  # self.process (checkpoints, EMA) keeps the plain denoiser
        self.opt = torch.optim.AdamW(self.process.parameters(), lr=self.cfg.lr, amsgrad=True,
                                     weight_decay=self.cfg.weight_decay)
        self.clipper = GradClipper()
        self.state = TrainState()
        self.gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.rank)
        self.node_dist = NodeCountDistribution(dict(self.stats.n_atoms_hist))
        self.noise_align = noise_aligner(self.cfg.align_noise)  # None for "none": the loss is unchanged
        elements = list(self.stats.elements)
        self._hydrogen = elements.index("H") if "H" in elements else None  # fragment masks: H follow heavy atoms

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "stats": self.stats.to_dict(),
            "model": self.process.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "clip_history": list(self.clipper.queue),
            "state": vars(self.state).copy(), "rng": self.gen.get_state(),
        }

    def save(self, name: str = "last.pt") -> None:
        """Write a checkpoint (rank 0 only)."""
        if self.rank == 0:
            save_checkpoint(self.out_dir / name, self._payload())

    def resume(self, path: str | Path | None = None) -> None:
        """Restore weights, EMA, optimizer, clipping history, counters and RNG from a checkpoint."""
        payload = load_checkpoint(path or self.out_dir / "last.pt", map_location=self.device)
        if "optimizer" not in payload:
            raise ValueError("checkpoint has no optimizer state; it cannot be resumed (use it as init instead)")
        path = path or self.out_dir / "last.pt"
        load_state(self.process, payload["model"], path)
        load_state(self.ema, payload["ema"], path, what="EMA weights")
        load_state(self.opt, payload["optimizer"], path, what="optimizer state")
        try:
            self.clipper = GradClipper(payload["clip_history"])
            self.state = TrainState(**payload["state"])
            self.gen.set_state(payload["rng"])  # rank 0's stream (only rank 0 writes checkpoints)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(f"checkpoint {path} cannot be resumed: training state unreadable ({exc})") from None
        if self.rank > 0:  # other ranks derive their own stream from it, or every rank would draw the same t and noise
            self.gen.manual_seed(int(torch.randint(2**62, (1,), generator=self.gen)) + self.rank)
        if self.rank == 0:
            truncate_log(self.out_dir / "log.csv", self.state.step)

    def init_from(self, path: str | Path) -> list[str]:
        """Start from the (EMA and raw) weights of another checkpoint, e.g. a shipped model.

        A conditional run may start from an unconditional checkpoint with the same ``model`` and
        ``diffusion`` sections: the context's new input columns (and unused output rows) start at
        zero (:func:`~moldiff.checkpoint.grow_state_dict`), so training begins from exactly the
        unconditional network and learns to use the context. Likewise a ``model.fragment_input``
        run may start from a checkpoint without the flag (otherwise the same ``model`` and
        ``diffusion``, the same conditioning): the flag's input column starts at zero. (A fragment
        model cannot grow a context: the context columns come before the flag.) Returns the
        names of grown tensors.
        """
        payload = load_checkpoint(path, map_location=self.device)
        src_cfg = payload.get("config") or {}
        src_cond = tuple((payload.get("stats") or {}).get("conditioning") or ())
        mine = self.config.to_dict()
        defaults = ExperimentConfig().to_dict()  # keys added since the source was written get their defaults
        src_model = {**defaults["model"], **(src_cfg.get("model") or {})}
        src_diffusion = {**defaults["diffusion"], **(src_cfg.get("diffusion") or {})}
        src_flag, my_flag = bool(src_model.pop("fragment_input")), bool(mine["model"]["fragment_input"])
        my_model = {k: v for k, v in mine["model"].items() if k != "fragment_input"}
        cond_grows = not src_cond and bool(self.stats.conditioning) and not src_flag
        flag_grows = my_flag and not src_flag and src_cond == tuple(self.stats.conditioning)
        growable = (src_model == my_model and src_diffusion == mine["diffusion"] and src_flag <= my_flag
                    and (cond_grows or flag_grows))
        if not growable:
            load_state(self.process, payload["model"], path)
            load_state(self.ema, payload["ema"], path, what="EMA weights")
            return []
        try:
            model, grown = grow_state_dict(self.process.state_dict(), payload["model"])
            ema, _ = grow_state_dict(self.ema.state_dict(), payload["ema"])
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"checkpoint {path} does not fit this conditional model ({exc})") from None
        load_state(self.process, model, path)
        load_state(self.ema, ema, path, what="EMA weights")
        if self.rank == 0 and grown:
            what = [f"conditioning {list(self.stats.conditioning)}"] if cond_grows else []
            what += ["the fixed-atom (fragment) input"] if flag_grows else []
            print(f"init: {path} -> {' and '.join(what)} (zero-initialised new weights in {', '.join(grown)})",
                  file=sys.stderr)
        return grown

    def _fragment_mask(self, mb: MolBatch) -> torch.Tensor | None:
        """Fragment training: ``[N]`` bool, the atoms held fixed (``None`` when ``fragment_prob`` is 0: no draw)."""
        if self.cfg.fragment_prob <= 0:
            return None
        types = mb.one_hot.argmax(1)
        heavy = types != self._hydrogen if self._hydrogen is not None else torch.ones_like(types, dtype=torch.bool)
        return fragment_mask(mb.pos, heavy, mb.batch, mb.num_graphs, self.cfg.fragment_prob, self.cfg.fragment_free,
                             self.gen, bond_index=mb.bond_index)

    def _context(self, mb: MolBatch, train: bool) -> MolBatch:
        """Guidance training: ``[B, C]`` -> ``[c · keep, keep]``, nulled w.p. ``context_dropout`` when training."""
        p, ctx = self.cfg.context_dropout, mb.context
        if ctx is None or p <= 0:
            return mb
        if train:
            return replace(mb, context=drop_context(ctx, p, self.gen))
        return replace(mb, context=with_keep_flags(ctx, torch.ones(mb.num_graphs, device=ctx.device)))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self) -> float:
        """Mean validation NLL (EMA model, VLB estimator, including ``-log p(N)``)."""
        if self.val_batches is None:
            return float("nan")
        gen = torch.Generator().manual_seed(12345)
        total, count = 0.0, 0
        for mb in self.val_batches(0):
            mb = self._context(mb.to(self.device), train=False)
            nll = self.ema.nll(mb, generator=gen).cpu().double() - self.node_dist.log_prob(mb.num_atoms.cpu())
            total += float(nll.sum())
            count += mb.num_graphs
        return total / max(count, 1)

    # ------------------------------------------------------------------ loop
    def _log(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        path = self.out_dir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def _evaluate_and_save(self, row: dict[str, Any]) -> None:
        val_nll = self.validate()
        row["val_nll"] = val_nll
        if self.cfg.n_eval_samples and self.rank == 0:
            n, context = self.cfg.n_eval_samples, None
            counts = self.node_dist.sample(n, torch.Generator().manual_seed(self.state.step))
            if self.stats.context_nf and self.val_batches is not None:
                # conditional model: sample at the (N, c) pairs of real validation molecules
                mb = self._context(next(iter(self.val_batches(0))), train=False)
                counts, context = mb.num_atoms[:n], mb.context[:n]
            a, m = quick_stability(self.ema, list(self.stats.elements), counts, self.cfg.eval_sample_steps,
                                   seed=self.state.step, context=context)
            row["atom_stability"], row["mol_stability"] = a, m
        self._log(row)
        if math.isfinite(val_nll) and val_nll < self.state.best_val_nll:
            self.state.best_val_nll = val_nll
            self.save("best.pt")
        self.save("last.pt")
        if self.rank == 0:
            plot_log(self.out_dir / "log.csv", self.out_dir / "loss.png")

    def fit(self) -> TrainState:
        """Train until ``epochs``, ``max_steps`` or ``max_minutes`` is reached; returns the final state."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self.config.save_yaml(self.out_dir / "config.yaml")
        cfg, st = self.cfg, self.state
        t_start = time.perf_counter() - st.elapsed_s
        done = False
        bar = tqdm(total=cfg.max_steps, initial=st.step, desc="train", unit="step",
                   disable=not self.progress or self.rank != 0)
        window_t, window_mols = time.perf_counter(), 0
        while not done and st.epoch < cfg.epochs:
            self.process.train()
            for i, mb in enumerate(self.train_batches(st.epoch)):
                if i < st.batch_in_epoch or i % self.world != self.rank:
                    continue
                fixed = self._fragment_mask(mb)  # on the loader's (CPU) batch: no device sync
                mb = self._context(mb.to(self.device), train=True)
                if cfg.augment_rotations:  # EDM's data augmentation: a random rotation of every molecule
                    mb = replace(mb, pos=rotate_batch(mb.pos, mb.batch, self.gen))
                if fixed is not None:
                    fixed = fixed.to(self.device)
                out = self.train_process.loss(mb, generator=self.gen, noise_align=self.noise_align, fixed=fixed)
                loss = out.loss.mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for p in self.process.parameters() if p.grad is not None]
                grad_norm, clip_max = self.clipper(params) if cfg.clip_grad else (float("nan"), float("nan"))
                if cfg.lr_schedule != "constant":
                    for group in self.opt.param_groups:
                        group["lr"] = lr_at(cfg, st.step)
                self.opt.step()
                ema_update(self.ema, self.process, ema_decay_at(cfg.ema_decay, st.step, cfg.ema_warmup))
                st.step += 1
                st.batch_in_epoch = i + 1
                window_mols += mb.num_graphs * self.world
                bar.update(1)
                st.elapsed_s = time.perf_counter() - t_start
                row = {"step": st.step, "epoch": st.epoch, "loss": loss.item(), "grad_norm": grad_norm,
                       "clip_max": clip_max, "elapsed_s": round(st.elapsed_s, 2)}
                if st.step % cfg.log_every_steps == 0:
                    row["mol_per_s"] = window_mols / max(time.perf_counter() - window_t, 1e-9)
                    window_t, window_mols = time.perf_counter(), 0
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                out_of_time = cfg.max_minutes is not None and st.elapsed_s > cfg.max_minutes * 60
                done = (cfg.max_steps is not None and st.step >= cfg.max_steps) or out_of_time
                if st.step % cfg.eval_every_steps == 0 or done:
                    self._evaluate_and_save(row)
                elif st.step % cfg.log_every_steps == 0:
                    self._log(row)
                    if st.step % cfg.checkpoint_every_steps == 0:
                        self.save("last.pt")
                if done:
                    break
            if not done:
                st.epoch += 1
                st.batch_in_epoch = 0
        bar.close()
        self.save("last.pt")
        return st


def truncate_log(log_csv: str | Path, step: int) -> int:
    """Drop the rows of ``log_csv`` after ``step`` (written after the checkpoint a run resumes from).

    A run killed between checkpoints has logged steps it will train again; without this the log
    would hold them twice, out of order. Atomic; returns the number of rows dropped.
    """
    from moldiff.io import atomic_write

    path = Path(log_csv)
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    col = header.index("step") if "step" in header else 0

    def keep(row: list[str]) -> bool:
        try:
            return int(float(row[col])) <= step
        except (ValueError, IndexError):
            return False

    kept = [r for r in body if keep(r)]
    if len(kept) == len(body):
        return 0
    with atomic_write(path) as fh:
        csv.writer(fh).writerows([header, *kept])  # csv's \r\n, as the trainer's DictWriter writes
    return len(body) - len(kept)


def plot_log(log_csv: str | Path, out_png: str | Path) -> None:
    """Plot training loss (and validation NLL / stability when logged) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(log_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(df["step"], df["loss"], lw=0.8, label="train loss")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].legend()
    val = df.dropna(subset=["val_nll"]) if "val_nll" in df else df.iloc[0:0]
    axes[1].set_xlabel("step")
    if len(val):
        axes[1].plot(val["step"], val["val_nll"], "o-", label="val NLL")
        axes[1].legend(loc="upper left")
    if "mol_stability" in df and df["mol_stability"].notna().any():
        # quick check; models without a variational bound (categorical types) have no val NLL line
        ax2 = axes[1].twinx() if len(val) else axes[1]
        s = df.dropna(subset=["mol_stability"])
        ax2.plot(s["step"], 100 * s["mol_stability"], "s--", color="C2", label="mol stable %")
        if "atom_stability" in s:
            ax2.plot(s["step"], 100 * s["atom_stability"], "^-", color="C3", label="atom stable %")
        ax2.set_ylabel("% (trainer's quick check)")
        ax2.legend(loc="upper right" if len(val) else "center right")
    fig.tight_layout()
    tmp = Path(out_png).with_suffix(".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out_png)
    except BaseException:  # e.g. Ctrl-C while saving: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
