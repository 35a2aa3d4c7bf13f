"""Datasets by name: one small interface, a registry of named datasets, and the stored-directory kind.

Every dataset answers three questions: its molecules (:meth:`Dataset.load`), the rows of a split
(:meth:`Dataset.split`) and its statistics (:meth:`Dataset.stats`). Datasets that need their own
rules (QM9: read from a wheel, EDM's splits, property units) are registered by name with
:func:`register_dataset` in their own module (see :mod:`moldiff.data.qm9`). Every other name or
directory is a :class:`StoredDataset`: the on-disk layout that ``moldiff data import`` and
``moldiff data build`` write::

    <root>/NAME/processed/NAME.npz   MoleculeArrays (git-ignored)
    <root>/NAME/splits.npz           train / valid / test row indices
    <root>/NAME/stats.json           histograms, element counts, property mean / MAD, provenance

So a new kind of dataset is one module: it either writes that layout (a builder) or registers a
:class:`Dataset` subclass under its name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.data.arrays import MoleculeArrays


def _root(root: str | Path | None) -> Path:
    from moldiff.data.qm9 import data_root

    return Path(root if root is not None else data_root())


class Dataset:
    """A dataset under a data root: molecules, splits and statistics.

    Args:
        name: the dataset's name.
        root: data directory (default :func:`~moldiff.data.qm9.data_root`).
    """

    def __init__(self, name: str, root: str | Path | None = None) -> None:
        self.name = name
        self.root = _root(root)

    @property
    def directory(self) -> Path:
        """``<root>/<name>``."""
        return self.root / self.name

    def load(self) -> MoleculeArrays:
        """All molecules."""
        raise NotImplementedError

    def split(self, name: str) -> np.ndarray:
        """``[n]`` int64 row indices of split ``name``."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """The ``stats.json`` dictionary."""
        from moldiff.data.statistics import read_stats

        return read_stats(self.directory / "stats.json")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, root={str(self.root)!r})"


class StoredDataset(Dataset):
    """A dataset in moldiff's directory layout (imported from a file or built from SMILES).

    Args:
        name_or_path: its name under ``root``, or its directory (one holding ``processed/``).
        root: data directory for a name.
    """

    def __init__(self, name_or_path: str | Path, root: str | Path | None = None) -> None:
        p = Path(name_or_path)
        if p.is_dir() and (p / "processed").is_dir():
            super().__init__(p.name, p.parent)
        else:
            super().__init__(str(name_or_path), root)

    @property
    def arrays_path(self) -> Path:
        """``<root>/<name>/processed/<name>.npz``."""
        return self.directory / "processed" / f"{self.name}.npz"

    def load(self) -> MoleculeArrays:
        """Read the molecules.

        Raises:
            FileNotFoundError: no such dataset.
        """
        if not self.arrays_path.is_file():
            raise FileNotFoundError(
                f"unknown dataset {self.name!r}: no {self.arrays_path} (create it with "
                "`moldiff data import FILE --name NAME` or `moldiff data build ... --name NAME`)"
            )
        return MoleculeArrays.load(self.arrays_path)

    def split(self, name: str) -> np.ndarray:
        """Rows of split ``name`` from ``splits.npz``.

        Raises:
            FileNotFoundError: no ``splits.npz``.
            ValueError: unknown split name.
        """
        from moldiff.data.splits import load_splits

        path = self.directory / "splits.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no splits for dataset {self.name!r} at {path}")
        splits = load_splits(path)
        if name not in splits:
            raise ValueError(f"unknown split {name!r} of {self.name!r}; choose one of {', '.join(splits)}")
        return splits[name]


_REGISTRY: dict[str, Callable[[Path | None], Dataset]] = {}


def register_dataset(name: str, factory: Callable[[Path | None], Dataset]) -> None:
    """Register ``factory(root) -> Dataset`` under ``name`` (the name is then reserved for it)."""
    _REGISTRY[name.lower()] = factory


def registered_datasets() -> tuple[str, ...]:
    """Names of the registered datasets, e.g. ``("qm9",)``."""
    return tuple(sorted(_REGISTRY))


def get_dataset(name_or_path: str | Path, root: str | Path | None = None) -> Dataset:
    """The registered dataset of that name, else the :class:`StoredDataset` of that name or directory.

    >>> get_dataset("qm9").name
    'qm9'
    """
    factory = _REGISTRY.get(str(name_or_path))
    if factory is not None:
        return factory(None if root is None else Path(root))
    return StoredDataset(name_or_path, root)
