"""Wire a training run from a config: data, model, trainer (used by ``moldiff train`` and ``torchrun``)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from moldiff.config import ExperimentConfig
from moldiff.constants import BOND_ORDERS
from moldiff.data.arrays import atom_ranges
from moldiff.data.datasets import load_dataset
from moldiff.data.loader import MolLoader
from moldiff.data.splits import get_split
from moldiff.data.statistics import n_atoms_histogram, property_mean_mad
from moldiff.models import build_model
from moldiff.sampling.sharding import Shard, resolve_device
from moldiff.training.trainer import Trainer, TrainState
from moldiff.types import DatasetStats

_SPLIT_NAMES = {"train": "train", "first_half": "first_half", "second_half": "second_half"}


def _maybe_init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def dataset_statistics(arrays: Any, rows: Any, conditioning: tuple[str, ...], dataset: str) -> DatasetStats:
    """Statistics stored in every checkpoint so that sampling needs no dataset."""
    hist = n_atoms_histogram(arrays, rows)
    return DatasetStats(
        dataset=dataset,
        elements=tuple(arrays.elements),
        n_atoms_hist={int(k): int(v) for k, v in hist.items()},
        max_n_atoms=int(max(hist)),
        context_nf=len(conditioning),
        conditioning=tuple(conditioning),
    )


def _require_bonds(arrays: Any) -> None:
    if not arrays.has_bonds:
        raise ValueError("diffusion.bonds 'categorical' needs a dataset with bonds (built from SMILES or SDF "
                         "with `moldiff data build` / `moldiff data import`; QM9: run `moldiff data prepare`, "
                         "which derives them); this one stores none")


def bond_class_counts(arrays: Any, rows: np.ndarray, num_classes: int) -> torch.Tensor:
    """``[K_b]`` counts of the bond classes over all atom pairs of molecules ``rows`` (class 0: no bond).

    The limit of a categorical bond channel; raises ``ValueError`` when the dataset stores no bonds.
    """
    _require_bonds(arrays)
    n = arrays.n_atoms[rows].astype(np.int64)
    sel = atom_ranges(arrays.bond_ptr[rows], arrays.n_bonds[rows])
    counts = np.bincount(arrays.bond_type[sel].astype(np.int64), minlength=num_classes).astype(np.float64)
    counts[0] = float((n * (n - 1) // 2).sum()) - counts[1:].sum()
    return torch.as_tensor(counts, dtype=torch.float64)


def rows_with_bonds(arrays: Any, rows: np.ndarray, what: str = "training") -> np.ndarray:
    """``rows`` without the molecules whose bonds are unknown (``has_bonds_mask`` False), for a bond model.

    Prints how many were dropped (nothing when none). Raises ``ValueError`` when the dataset stores
    no bonds (see :func:`bond_class_counts`).
    """
    _require_bonds(arrays)
    rows = np.asarray(rows)
    keep = arrays.bonds_known[rows]
    if not keep.all():
        import sys

        print(f"diffusion.bonds 'categorical': dropped {int((~keep).sum())} of {len(rows)} {what} molecules "
              "whose bonds are unknown (has_bonds_mask)", file=sys.stderr)
    return rows[keep]


def run_training(
    config: ExperimentConfig, out_dir: str | Path, resume: bool = False, init: str | Path | None = None,
    progress: bool = True,
) -> TrainState:
    """Train a model as described by ``config``; writes checkpoints and logs to ``out_dir``.

    Args:
        config: experiment config.
        out_dir: run directory.
        resume: continue exactly from ``out_dir/last.pt``.
        init: initialise weights from another checkpoint (e.g. a shipped model).
        progress: show progress bars.

    Returns:
        The final :class:`TrainState`.
    """
    out_dir = Path(out_dir)
    if resume and not (out_dir / "last.pt").is_file():
        raise ValueError(f"--resume: no checkpoint to resume at {out_dir / 'last.pt'}")
    _maybe_init_distributed()
    tc, dc = config.train, config.data
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device, Shard.from_env())  # torchrun: cuda -> cuda:LOCAL_RANK
    arrays = load_dataset(dc.dataset)
    split = _SPLIT_NAMES[dc.split]
    rows = get_split(split, dc.dataset)
    if dc.max_molecules:
        rows = rows[: dc.max_molecules]
    try:
        val_rows = get_split("valid", dc.dataset)
    except (ValueError, FileNotFoundError):
        val_rows = None
    if val_rows is not None and tc.val_molecules:
        val_rows = val_rows[: tc.val_molecules]
    if config.diffusion.bonds == "categorical":  # a bond model never sees a molecule whose bonds are unknown
        rows = rows_with_bonds(arrays, rows, "training")
        if val_rows is not None:
            val_rows = rows_with_bonds(arrays, val_rows, "validation")
    n_val = 0 if val_rows is None else len(val_rows)
    if len(rows) == 0 or n_val == 0:
        raise ValueError(f"dataset {dc.dataset!r} is too small to split: {len(rows)} training and {n_val} "
                         "validation molecules; training needs both (import at least 10 molecules)")
    norms = {}
    if dc.conditioning:
        # EDM normalises properties with the validation split's mean and MAD.
        norm_rows = val_rows if val_rows is not None else rows
        norms = property_mean_mad(arrays, norm_rows, dc.conditioning)
    loader_kw = dict(context_keys=dc.conditioning, context_norms=norms, remove_h=dc.remove_h)
    train = MolLoader(arrays, rows, batch_size=tc.batch_size, shuffle=True, drop_last=False, seed=tc.seed,
                      **loader_kw)
    val = None
    if val_rows is not None and len(val_rows):
        val = MolLoader(arrays, val_rows, batch_size=tc.batch_size, shuffle=False, **loader_kw)
    stats = replace(dataset_statistics(train.arrays, rows, tuple(dc.conditioning), dc.dataset),
                    elements=tuple(train.elements))
    if norms:
        from moldiff.sampling.priors import PropertyDistribution

        # p(c | N) of the generator's training molecules (EDM's DistributionProperty), for sampling
        # targets without a dataset.
        prop_dist = PropertyDistribution.from_values(
            train.arrays.n_atoms[rows], {k: arrays.properties[k][rows] for k in dc.conditioning}
        )
        stats = replace(stats, property_norms={k: (float(m), float(s)) for k, (m, s) in norms.items()},
                        property_distribution=prop_dist.to_dict())
    type_prior = None
    if config.diffusion.atom_types == "categorical":  # the limit of categorical types: the data's marginal
        types = train.arrays.type_index[atom_ranges(train.arrays.ptr[rows], train.arrays.n_atoms[rows])]
        type_prior = torch.as_tensor(np.bincount(types, minlength=len(train.elements)), dtype=torch.float64)
    bond_prior = None
    if config.diffusion.bonds == "categorical":
        bond_prior = bond_class_counts(train.arrays, rows, 1 + len(BOND_ORDERS))
    process = build_model(config, len(train.elements), len(dc.conditioning), type_prior=type_prior,
                          bond_prior=bond_prior)
    trainer = Trainer(
        process, config, stats, train_batches=train.iter_batches, out_dir=out_dir,
        val_batches=None if val is None else val.iter_batches, device=device, progress=progress,
    )
    if resume:
        trainer.resume()
    elif init is not None:
        trainer.init_from(init)
    return trainer.fit()
