"""Train / valid / test split indices: EDM's exact QM9 split and random splits for imported sets.

EDM (``qm9/data/prepare/qm9.py::gen_splits_gdb9``, ``qm9/data/utils.py::initialize_datasets``):

* ``perm = RandomState(0).permutation(130831)``; train = ``perm[:100000]``, valid = the next 17,748,
  test = the last 13,083; each split's rows sorted (rows index the GDB-sorted molecules).
* halves: ``fixed_perm = RandomState(42).permutation(100000)`` indexes the *sorted* train rows;
  ``first_half = train[fixed_perm[:50000]]`` (D_a, property classifier) and
  ``second_half = train[fixed_perm[50000:]]`` (D_b, conditional generator). The halves stay in
  permutation order, as in EDM.

Indices are stored in ``<root>/qm9/splits.npz`` (committed under ``data/``) and regenerated if missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

from moldiff.data.arrays import read_npz
from moldiff.data.qm9 import QM9_NUM_MOLECULES, data_root

QM9_SPLIT_SIZES: Final[dict[str, int]] = {"train": 100_000, "valid": 17_748, "test": 13_083}
QM9_SPLITS: Final[tuple[str, ...]] = ("train", "valid", "test", "first_half", "second_half")
SPLIT_SEED: Final[int] = 0
HALVES_SEED: Final[int] = 42


def qm9_splits() -> dict[str, np.ndarray]:
    """Compute EDM's QM9 split indices (rows of the GDB-sorted molecules).

    Returns:
        ``train`` [100000], ``valid`` [17748], ``test`` [13083] (sorted) and ``first_half`` /
        ``second_half`` [50000] (EDM's permutation order), all int64.

    >>> s = qm9_splits()
    >>> [len(s[k]) for k in ("train", "valid", "test", "first_half", "second_half")]
    [100000, 17748, 13083, 50000, 50000]
    """
    perm = np.random.RandomState(SPLIT_SEED).permutation(QM9_NUM_MOLECULES)
    n_train, n_valid = QM9_SPLIT_SIZES["train"], QM9_SPLIT_SIZES["valid"]
    out = {
        "train": np.sort(perm[:n_train]),
        "valid": np.sort(perm[n_train : n_train + n_valid]),
        "test": np.sort(perm[n_train + n_valid :]),
    }
    fixed_perm = np.random.RandomState(HALVES_SEED).permutation(n_train)
    out["first_half"] = out["train"][fixed_perm[: n_train // 2]]
    out["second_half"] = out["train"][fixed_perm[n_train // 2 :]]
    return {k: v.astype(np.int64) for k, v in out.items()}


def random_split(
    num_molecules: int, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, np.ndarray]:
    """Random train/valid/test split of ``num_molecules`` rows (each split sorted).

    Args:
        num_molecules: number of molecules ``M``.
        seed: ``RandomState`` seed.
        fractions: train / valid / test fractions (sum 1); test takes the remainder.

    Returns:
        ``train``, ``valid``, ``test`` int64 index arrays covering ``0..M-1`` exactly once.

    Raises:
        ValueError: negative fractions or fractions that do not sum to 1.

    >>> {k: len(v) for k, v in random_split(10).items()}
    {'train': 8, 'valid': 1, 'test': 1}
    """
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    perm = np.random.RandomState(seed).permutation(num_molecules)
    n_train = int(round(fractions[0] * num_molecules))
    n_valid = min(int(round(fractions[1] * num_molecules)), num_molecules - n_train)
    return {
        "train": np.sort(perm[:n_train]).astype(np.int64),
        "valid": np.sort(perm[n_train : n_train + n_valid]).astype(np.int64),
        "test": np.sort(perm[n_train + n_valid :]).astype(np.int64),
    }


def save_splits(path: str | Path, splits: dict[str, np.ndarray], **meta: int | str) -> None:
    """Write split indices (int32, compressed) and scalar metadata to ``path`` atomically."""
    from moldiff.io import atomic_write

    arrays = {k: np.asarray(v, dtype=np.int32) for k, v in splits.items()}
    arrays.update({f"meta__{k}": np.array(v) for k, v in meta.items()})
    with atomic_write(path, mode="wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_splits(path: str | Path) -> dict[str, np.ndarray]:
    """Read split indices written by :func:`save_splits` (int64; metadata keys skipped)."""
    arrays = read_npz(path, "split file")  # a damaged file: one ValueError naming it
    try:
        return {k: v.astype(np.int64) for k, v in arrays.items() if not k.startswith("meta__")}
    except (TypeError, ValueError) as exc:  # e.g. a string array where indices belong
        raise ValueError(f"{path}: damaged split file ({type(exc).__name__}); rebuild it") from None


def qm9_splits_path(root: str | Path | None = None) -> Path:
    """``<root>/qm9/splits.npz``."""
    return Path(root if root is not None else data_root()) / "qm9" / "splits.npz"


def write_qm9_splits(root: str | Path | None = None) -> Path:
    """Compute EDM's QM9 splits and save them to ``<root>/qm9/splits.npz``; return the path."""
    path = qm9_splits_path(root)
    save_splits(path, qm9_splits(), source="EDM gen_splits_gdb9 seed 0; halves seed 42",
                num_molecules=QM9_NUM_MOLECULES)
    return path


def get_split(name: str, dataset: str | Path = "qm9", root: str | Path | None = None) -> np.ndarray:
    """Row indices of split ``name`` of a dataset.

    Args:
        name: ``train``, ``valid``, ``test``; for QM9 also ``first_half`` / ``second_half``.
        dataset: a registered dataset (``"qm9"``), the name of a stored dataset, or its directory.
        root: data directory (default :func:`~moldiff.data.qm9.data_root`).

    Returns:
        ``[n]`` int64 row indices into the dataset's :class:`~moldiff.data.arrays.MoleculeArrays`.

    Raises:
        ValueError: unknown split name.
        FileNotFoundError: an imported dataset without ``splits.npz``.

    >>> get_split("valid")[:3].tolist()  # doctest: +SKIP
    [4, 14, 24]
    """
    from moldiff.data.registry import get_dataset

    return get_dataset(dataset, root).split(name)


def qm9_split(name: str, root: str | Path | None = None) -> np.ndarray:
    """Rows of EDM's QM9 split ``name`` (from ``<root>/qm9/splits.npz`` if present, else recomputed).

    Raises:
        ValueError: unknown split name.
    """
    if name not in QM9_SPLITS:
        raise ValueError(f"unknown QM9 split {name!r}; choose one of {', '.join(QM9_SPLITS)}")
    path = qm9_splits_path(root)
    if path.is_file():
        splits = load_splits(path)
        if name in splits:
            return splits[name]
    return qm9_splits()[name]
