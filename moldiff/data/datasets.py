"""Datasets by name or path: loading, QM9 preparation, importing your own molecules, writing a dataset.

Names resolve through :mod:`moldiff.data.registry` (QM9 is registered by :mod:`moldiff.data.qm9`);
any other name is a stored dataset under the data root (see :func:`~moldiff.data.qm9.data_root`)::

    <root>/NAME/processed/NAME.npz   MoleculeArrays (git-ignored)
    <root>/NAME/splits.npz           train / valid / test row indices
    <root>/NAME/stats.json           histograms, element counts, property mean / MAD, provenance

:func:`write_dataset` writes that layout atomically; ``import_dataset`` and the SMILES builder
(:mod:`moldiff.data.conformers`) use it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.constants import BOND_ORDERS
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.qm9 import QM9_PROPERTY_UNITS, QM9_SOURCE, data_root, load_qm9
from moldiff.data.registry import get_dataset, registered_datasets
from moldiff.data.splits import qm9_splits, random_split, save_splits, write_qm9_splits
from moldiff.data.statistics import compute_statistics, write_stats

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_NAMES = ("qm9",)  # kept for compatibility; every registered name is reserved
#: bond order read from an SDF (RDKit ``GetBondTypeAsDouble``) -> stored bond-type code
_ORDER_TO_CODE = {order: code for code, order in BOND_ORDERS.items()}


def dataset_dir(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """Directory of a dataset given its name (under ``root``) or its directory path."""
    return get_dataset(name_or_path, root).directory


def load_dataset(name_or_path: str | Path, root: str | Path | None = None) -> MoleculeArrays:
    """Load a registered dataset (``"qm9"``), a stored dataset by name or directory, or a ``.npz`` file.

    Raises:
        FileNotFoundError: no such dataset.

    >>> load_dataset("qm9").num_molecules  # doctest: +SKIP
    130831
    """
    p = Path(name_or_path)
    if p.suffix == ".npz" and p.is_file():
        return MoleculeArrays.load(p)
    return get_dataset(name_or_path, root).load()


def load_stats(name_or_path: str | Path = "qm9", root: str | Path | None = None) -> dict[str, Any]:
    """The ``stats.json`` of a dataset (for QM9 computed and written on first use)."""
    return get_dataset(name_or_path, root).stats()


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it can name a new stored dataset.

    Raises:
        ValueError: not letters, digits, ``_.-`` (at most 64), or a registered name such as ``qm9``.
    """
    if not _NAME_RE.match(name) or name.lower() in {*RESERVED_NAMES, *registered_datasets()}:
        reserved = ", ".join(repr(n) for n in registered_datasets())
        raise ValueError(f"invalid dataset name {name!r}: use letters, digits, '_', '.', '-' (not {reserved})")
    return name


def write_dataset(
    arrays: MoleculeArrays,
    name: str,
    splits: dict[str, np.ndarray],
    provenance: dict[str, Any],
    root: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write ``<root>/<name>/`` (arrays, splits, stats) so that it appears at once, complete.

    Everything is written into a staging directory next to the target and renamed onto it.

    Args:
        arrays: the molecules.
        name: dataset name (see :func:`check_dataset_name`).
        splits: ``train`` / ``valid`` / ``test`` row indices.
        provenance: stored under ``stats.json["provenance"]``.
        root: data directory (default :func:`~moldiff.data.qm9.data_root`).
        overwrite: replace an existing dataset of that name.
        seed: split seed, stored in ``splits.npz``.
        extra_files: file name -> ``writer(path)`` for more files in the dataset directory.

    Returns:
        The dataset directory.

    Raises:
        ValueError: bad name, or the dataset exists and ``overwrite`` is false.
    """
    check_dataset_name(name)
    root = Path(root if root is not None else data_root())
    target = root / name
    if target.exists() and not overwrite:
        raise ValueError(f"dataset {name!r} already exists at {target} (use --overwrite to replace it)")
    prop_split = "valid" if len(splits.get("valid", ())) else "train"
    stats = compute_statistics(arrays, splits, property_split=prop_split, provenance=provenance)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp creates 0700; give the usual permissions
    try:
        arrays.save(staging / "processed" / f"{name}.npz")
        save_splits(staging / "splits.npz", splits, seed=seed, num_molecules=arrays.num_molecules)
        write_stats(staging / "stats.json", stats)
        for fname, writer in (extra_files or {}).items():
            writer(staging / fname)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def prepare_qm9(
    root: str | Path | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
    bonds: bool = True,
) -> MoleculeArrays:
    """Build the QM9 cache, ``splits.npz`` and ``stats.json`` under ``<root>/qm9``.

    Args:
        root: data directory (default :func:`~moldiff.data.qm9.data_root`).
        progress: show progress bars.
        log: called with one line per step.
        bonds: derive QM9's bonds if the cache lacks them (:mod:`moldiff.data.qm9_bonds`, ~1 min).

    Returns:
        The loaded QM9 arrays.
    """
    root = Path(root if root is not None else data_root())
    arrays = load_qm9(root=root, progress=progress, log=log, bonds=bonds)
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
            **_qm9_bond_provenance(arrays),
        },
        units=QM9_PROPERTY_UNITS,
    )
    write_stats(root / "qm9" / "stats.json", stats)
    if log is not None:
        log(f"wrote {root / 'qm9' / 'stats.json'}")
    return arrays


def _qm9_bond_provenance(arrays: MoleculeArrays) -> dict[str, Any]:
    """How QM9's bonds were made and which molecules have none (empty without bonds)."""
    if not arrays.has_bonds:
        return {}
    missing = ~arrays.bonds_known
    return {
        "bonds": "derived (moldiff.data.qm9_bonds): the SMILES as template on the geometry, else xyz2mol "
                 "(rdDetermineBonds.DetermineBonds, charge 0); kekulised; formal charges kept",
        "molecules_without_bonds": int(missing.sum()),
        "without_bonds_index": arrays.index[missing].tolist(),
    }


def _common_properties(records: list[Any]) -> dict[str, np.ndarray]:
    """Numeric SDF fields present in every record."""
    if not records:
        return {}
    keys = set(records[0].properties)
    for rec in records[1:]:
        keys &= set(rec.properties)
    return {k: np.array([r.properties[k] for r in records], dtype=np.float64) for k in sorted(keys)}


def _sdf_bonds(records: list[Any]) -> list[list[tuple[int, int, int]]] | None:
    """Per-record ``(i, j, code)`` bonds, or ``None`` when the records carry no bonds (XYZ)."""
    if any(r.bonds is None for r in records):
        return None
    out = []
    for k, rec in enumerate(records, start=1):
        bonds = []
        for i, j, order in rec.bonds:
            if order not in _ORDER_TO_CODE:
                raise ValueError(f"record {k}: unsupported bond order {order} between atoms {i + 1} and {j + 1} "
                                 "(single, double, triple and aromatic bonds are stored)")
            bonds.append((i, j, _ORDER_TO_CODE[order]))
        out.append(bonds)
    return out


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
    fields present in every molecule become properties; SDF bonds (single, double, triple,
    aromatic) and formal charges are kept. Everything is validated and built before anything is
    written; the dataset directory appears at once (rename of a staging directory).

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

    check_dataset_name(name)
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
    try:
        bonds = _sdf_bonds(records)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None
    charges = None if any(r.formal_charges is None for r in records) else [r.formal_charges for r in records]
    arrays = MoleculeArrays.from_molecules(
        [(r.symbols, r.pos) for r in records],
        names=[r.name or f"{name}_{k:06d}" for k, r in enumerate(records)],
        properties=_common_properties(records),
        bonds=bonds,
        formal_charges=charges,
    )
    splits = random_split(arrays.num_molecules, seed=seed)
    write_dataset(
        arrays, name, splits, root=root, overwrite=overwrite, seed=seed,
        provenance={"dataset": name, "source": str(Path(file).resolve()), "split_seed": seed,
                    "num_molecules": arrays.num_molecules, "splits": "random 80/10/10"},
    )
    if log is not None:
        log(f"imported {arrays.num_molecules} molecules ({', '.join(arrays.elements)}) into {target}")
    return target
