"""Datasets: QM9 from the qm9pack wheel, EDM splits, statistics, imported and built molecule sets, batching.

The batching names (``MolLoader``, ``iter_batches``, ``batch_molecules``) load torch on first use,
so that ``moldiff data ...`` commands start without it.
"""

from typing import Any

from moldiff.data.arrays import MoleculeArrays, atom_ranges
from moldiff.data.datasets import (
    dataset_dir,
    import_dataset,
    load_dataset,
    load_stats,
    prepare_qm9,
    write_dataset,
)
from moldiff.data.qm9 import QM9_PROPERTY_UNITS, data_root, load_qm9
from moldiff.data.registry import Dataset, StoredDataset, get_dataset, register_dataset, registered_datasets
from moldiff.data.splits import QM9_SPLITS, get_split, qm9_splits, random_split
from moldiff.data.statistics import (
    compute_statistics,
    element_counts,
    histogram,
    n_atoms_histogram,
    property_mean_mad,
    property_norms,
)

__all__ = [
    "Dataset",
    "MoleculeArrays",
    "MolLoader",
    "QM9_PROPERTY_UNITS",
    "QM9_SPLITS",
    "StoredDataset",
    "atom_ranges",
    "batch_molecules",
    "compute_statistics",
    "data_root",
    "dataset_dir",
    "element_counts",
    "get_dataset",
    "get_split",
    "histogram",
    "import_dataset",
    "iter_batches",
    "load_dataset",
    "load_qm9",
    "load_stats",
    "n_atoms_histogram",
    "prepare_qm9",
    "property_mean_mad",
    "property_norms",
    "qm9_splits",
    "random_split",
    "register_dataset",
    "registered_datasets",
    "write_dataset",
]

_LAZY = {"MolLoader", "iter_batches", "batch_molecules"}


def __getattr__(name: str) -> Any:  # PEP 562: torch only when batching is used
    if name in _LAZY:
        from moldiff.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'moldiff.data' has no attribute {name!r}")
