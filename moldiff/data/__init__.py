"""Datasets: QM9 from the qm9pack wheel, EDM splits, statistics, imported molecule sets, batching."""

from moldiff.data.arrays import MoleculeArrays, atom_ranges
from moldiff.data.datasets import dataset_dir, import_dataset, load_dataset, load_stats, prepare_qm9
from moldiff.data.loader import MolLoader, iter_batches
from moldiff.data.qm9 import QM9_PROPERTY_UNITS, data_root, load_qm9
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
    "MoleculeArrays",
    "MolLoader",
    "QM9_PROPERTY_UNITS",
    "QM9_SPLITS",
    "atom_ranges",
    "compute_statistics",
    "data_root",
    "dataset_dir",
    "element_counts",
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
]
