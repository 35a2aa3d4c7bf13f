"""Dataset registry: QM9 preparation, importing your own molecules, loading by name or path.

On-disk layout of a dataset ``NAME`` under the data root (see :func:`~moldiff.data.qm9.data_root`)::

    <root>/NAME/processed/NAME.npz   MoleculeArrays (git-ignored)
    <root>/NAME/splits.npz           train / valid / test row indices
    <root>/NAME/stats.json           histograms, element counts, property mean / MAD, provenance
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.data.arrays import MoleculeArrays
from moldiff.data.qm9 import QM9_PROPERTY_UNITS, QM9_SOURCE, data_root, load_qm9
from moldiff.data.splits import qm9_splits, random_split, save_splits, write_qm9_splits
from moldiff.data.statistics import compute_statistics, read_stats, write_stats

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_NAMES = ("qm9",)


def dataset_dir(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """Directory of a dataset given its name (under ``root``) or its directory path."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "processed").is_dir():
        return p
    return Path(root if root is not None else data_root()) / str(name_or_path)


def load_dataset(name_or_path: str | Path, root: str | Path | None = None) -> MoleculeArrays:
    """Load ``"qm9"``, an imported dataset by name, its directory, or a ``.npz`` file.

    Raises:
        FileNotFoundError: no such dataset.

    >>> load_dataset("qm9").num_molecules  # doctest: +SKIP
    130831
    """
    if str(name_or_path) == "qm9":
        return load_qm9(root=root, progress=False)
    p = Path(name_or_path)
    if p.suffix == ".npz" and p.is_file():
        return MoleculeArrays.load(p)
    d = dataset_dir(name_or_path, root)
    path = d / "processed" / f"{d.name}.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"unknown dataset {str(name_or_path)!r}: no {path} "
            "(create it with `moldiff data import FILE --name NAME`)"
        )
    return MoleculeArrays.load(path)


def load_stats(name_or_path: str | Path = "qm9", root: str | Path | None = None) -> dict[str, Any]:
    """The ``stats.json`` of a dataset (for QM9 computed and written on first use)."""
    if str(name_or_path) == "qm9":
        path = Path(root if root is not None else data_root()) / "qm9" / "stats.json"
        if not path.is_file():
            prepare_qm9(root=root, progress=False)
        return read_stats(path)
    return read_stats(dataset_dir(name_or_path, root) / "stats.json")


def prepare_qm9(
    root: str | Path | None = None, progress: bool = True, log: Callable[[str], None] | None = None
) -> MoleculeArrays:
    """Build the QM9 cache, ``splits.npz`` and ``stats.json`` under ``<root>/qm9``.

    Returns:
        The loaded QM9 arrays.
    """
    root = Path(root if root is not None else data_root())
    arrays = load_qm9(root=root, progress=progress, log=log)
    path = write_qm9_splits(root)
    if log is not None:
        log(f"wrote {path}")
    stats = compute_statistics(
        arrays,
        qm9_splits(),
        property_split="valid",
        provenance={
            "dataset": "qm9",
            "source": f"{QM9_SOURCE} (QM9 figshare release, 3,054 uncharacterized molecules removed)",
            "num_molecules": arrays.num_molecules,
            "splits": "EDM gen_splits_gdb9 (seed 0) and initialize_datasets halves (seed 42)",
            "property_stats": "mean and MAD = mean|c - mean| on the valid split (EDM compute_mean_mad)",
            "thermo": "Cv = Cv_raw - 2.981 * n_atoms; U0/U/H/G not subtracted",
        },
        units=QM9_PROPERTY_UNITS,
    )
    write_stats(root / "qm9" / "stats.json", stats)
    if log is not None:
        log(f"wrote {root / 'qm9' / 'stats.json'}")
    return arrays


def _common_properties(records: list[Any]) -> dict[str, np.ndarray]:
    """Numeric SDF fields present in every record."""
    if not records:
        return {}
    keys = set(records[0].properties)
    for rec in records[1:]:
        keys &= set(rec.properties)
    return {k: np.array([r.properties[k] for r in records], dtype=np.float64) for k in sorted(keys)}


def import_dataset(
    file: str | Path,
    name: str,
    root: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Import an SDF or multi-frame XYZ file as dataset ``name`` (80/10/10 random split).

    The element vocabulary is the set of elements present, sorted by atomic number. Numeric SDF
    fields present in every molecule become properties. Everything is validated and built before
    anything is written; the dataset directory appears at once (rename of a staging directory).

    Args:
        file: input ``.sdf`` or ``.xyz`` (read strictly).
        name: dataset name (letters, digits, ``_.-``); ``qm9`` is reserved.
        root: data directory (default :func:`~moldiff.data.qm9.data_root`).
        seed: seed of the random split.
        overwrite: replace an existing dataset of that name.
        log: called with one line per file written.

    Returns:
        The dataset directory ``<root>/<name>``.

    Raises:
        ValueError: bad name, existing dataset, malformed or empty input (one-line message).
        FileNotFoundError: ``file`` does not exist.
    """
    from moldiff.io import read_molecules

    if not _NAME_RE.match(name) or name.lower() in RESERVED_NAMES:
        raise ValueError(f"invalid dataset name {name!r}: use letters, digits, '_', '.', '-' (not 'qm9')")
    root = Path(root if root is not None else data_root())
    target = root / name
    if target.exists() and not overwrite:
        raise ValueError(f"dataset {name!r} already exists at {target} (use --overwrite to replace it)")
    records = read_molecules(file, strict=True)
    if not records:
        raise ValueError(f"{file}: no molecules found")
    empty = [k for k, r in enumerate(records, start=1) if r.num_atoms == 0]
    if empty:
        raise ValueError(f"{file}: record {empty[0]}: molecule has no atoms")
    arrays = MoleculeArrays.from_molecules(
        [(r.symbols, r.pos) for r in records],
        names=[r.name or f"{name}_{k:06d}" for k, r in enumerate(records)],
        properties=_common_properties(records),
    )
    splits = random_split(arrays.num_molecules, seed=seed)
    prop_split = "valid" if len(splits["valid"]) else "train"
    stats = compute_statistics(
        arrays,
        splits,
        property_split=prop_split,
        provenance={"dataset": name, "source": str(Path(file).resolve()), "split_seed": seed,
                    "num_molecules": arrays.num_molecules, "splits": "random 80/10/10"},
    )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        arrays.save(staging / "processed" / f"{name}.npz")
        save_splits(staging / "splits.npz", splits, seed=seed, num_molecules=arrays.num_molecules)
        write_stats(staging / "stats.json", stats)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if log is not None:
        log(f"imported {arrays.num_molecules} molecules ({', '.join(arrays.elements)}) into {target}")
    return target
