"""Dataset statistics: n_atoms histograms, element counts, property mean / MAD → ``stats.json``.

EDM samples the number of atoms from the **train** histogram (``configs/datasets_config.py``) and
normalises conditioning properties as ``(c − mean) / MAD`` with ``MAD = mean|c − mean|`` computed on
the **valid** split (``qm9/utils.py::compute_mean_mad``). ``stats.json`` stores both, with provenance,
so sampling needs no dataset (see ``data/README.md``).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.data.arrays import MoleculeArrays

STATS_VERSION = 1


def n_atoms_histogram(arrays: MoleculeArrays, rows: np.ndarray | None = None) -> dict[int, int]:
    """``{n_atoms: number of molecules}`` over ``rows`` (default: all), sorted by ``n_atoms``."""
    n = arrays.n_atoms if rows is None else arrays.n_atoms[np.asarray(rows, dtype=np.int64)]
    sizes, counts = np.unique(n, return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts, strict=True)}


def element_counts(arrays: MoleculeArrays, rows: np.ndarray | None = None) -> dict[str, int]:
    """``{symbol: number of atoms}`` over ``rows`` for every element of the vocabulary."""
    if rows is None:
        types = arrays.type_index
    else:
        types = arrays.subset(rows).type_index
    counts = np.bincount(types, minlength=len(arrays.elements))
    return {s: int(c) for s, c in zip(arrays.elements, counts, strict=True)}


def property_mean_mad(
    arrays: MoleculeArrays, rows: np.ndarray | None = None, keys: Iterable[str] | None = None
) -> dict[str, tuple[float, float]]:
    """Mean and mean absolute deviation of every property over ``rows``.

    Args:
        arrays: the molecules.
        rows: ``[n]`` row indices (default: all molecules).
        keys: properties (default: all of ``arrays.properties``).

    Returns:
        ``{key: (mean, MAD)}`` with ``MAD = mean(|c − mean|)``.

    Raises:
        KeyError: an unknown property.
    """
    keys = list(arrays.properties) if keys is None else list(keys)
    out = {}
    for key in keys:
        if key not in arrays.properties:
            raise KeyError(f"unknown property {key!r}; available: {', '.join(arrays.properties)}")
        c = arrays.properties[key] if rows is None else arrays.properties[key][np.asarray(rows)]
        mean = float(np.mean(c))
        out[key] = (mean, float(np.mean(np.abs(c - mean))))
    return out


def _chemistry_counts(arrays: MoleculeArrays, rows: np.ndarray) -> dict[str, dict[str, int]]:
    """Bond-type and formal-charge counts over ``rows`` (only for sets that store them)."""
    out: dict[str, dict[str, int]] = {}
    if arrays.bond_ptr is not None or arrays.formal_charge is not None:
        sub = arrays.subset(rows)
        if sub.bond_type is not None:
            codes, counts = np.unique(sub.bond_type, return_counts=True)
            out["bond_type_counts"] = {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}
        if sub.formal_charge is not None:
            codes, counts = np.unique(sub.formal_charge, return_counts=True)
            out["formal_charge_counts"] = {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}
    return out


def compute_statistics(
    arrays: MoleculeArrays,
    splits: Mapping[str, np.ndarray],
    property_split: str = "valid",
    provenance: Mapping[str, Any] | None = None,
    units: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Statistics of every split, in the JSON layout of ``stats.json``.

    Args:
        arrays: the molecules.
        splits: split name -> row indices.
        property_split: split on which property mean/MAD are computed (EDM: ``valid``).
        provenance: free-form source description stored under ``"provenance"``.
        units: property units stored next to the mean/MAD.

    Returns:
        ``{"version", "provenance", "elements", "splits": {name: {"num_molecules", "num_atoms",
        "n_atoms_histogram", "n_heavy_atoms_histogram", "element_counts"}}, "properties":
        {"split", "mean", "mad", "units"}}``; histogram keys are strings (JSON).
    """
    if property_split not in splits:
        raise ValueError(f"property split {property_split!r} is not among the splits {list(splits)}")
    heavy = arrays.remove_hydrogens() if "H" in arrays.elements else arrays
    out: dict[str, Any] = {
        "version": STATS_VERSION,
        "provenance": {
            **(provenance or {}),
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
            "generator": "moldiff.data.statistics.compute_statistics",
        },
        "elements": list(arrays.elements),
        "splits": {},
    }
    for name, rows in splits.items():
        rows = np.asarray(rows, dtype=np.int64)
        out["splits"][name] = {
            "num_molecules": int(len(rows)),
            "num_atoms": int(arrays.n_atoms[rows].sum()),
            "n_atoms_histogram": {str(k): v for k, v in n_atoms_histogram(arrays, rows).items()},
            "n_heavy_atoms_histogram": {str(k): v for k, v in n_atoms_histogram(heavy, rows).items()},
            "element_counts": element_counts(arrays, rows),
            **_chemistry_counts(arrays, rows),
        }
    norms = property_mean_mad(arrays, splits[property_split])
    out["properties"] = {
        "split": property_split,
        "mean": {k: v[0] for k, v in norms.items()},
        "mad": {k: v[1] for k, v in norms.items()},
        "units": dict(units or {}),
    }
    return out


def write_stats(path: str | Path, stats: Mapping[str, Any]) -> None:
    """Write ``stats`` as indented JSON, atomically.

    A file that already holds the same statistics is left untouched, its ``created`` date included,
    so regenerating a committed ``stats.json`` does not show as a change in a fresh clone.
    """
    from moldiff.io import atomic_write

    path = Path(path)
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and _without_date(old) == _without_date(json.loads(json.dumps(stats))):
            return
    with atomic_write(path) as fh:
        json.dump(stats, fh, indent=1)
        fh.write("\n")


def _without_date(stats: Mapping[str, Any]) -> dict[str, Any]:
    """``stats`` without ``provenance.created`` (the only field that changes between identical runs)."""
    out = dict(stats)
    if isinstance(out.get("provenance"), dict):
        out["provenance"] = {k: v for k, v in out["provenance"].items() if k != "created"}
    return out


def read_stats(path: str | Path) -> dict[str, Any]:
    """Read a ``stats.json``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a moldiff statistics file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    stats = json.loads(path.read_text())
    if not isinstance(stats, dict) or "splits" not in stats or "properties" not in stats:
        raise ValueError(f"{path}: not a moldiff stats.json")
    return stats


def histogram(stats: Mapping[str, Any], split: str = "train", heavy_only: bool = False) -> dict[int, int]:
    """``{n_atoms: count}`` of ``split`` from a stats dict (``heavy_only``: hydrogens removed)."""
    if split not in stats["splits"]:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(stats['splits'])}")
    key = "n_heavy_atoms_histogram" if heavy_only else "n_atoms_histogram"
    return {int(k): int(v) for k, v in stats["splits"][split][key].items()}


def property_norms(stats: Mapping[str, Any], keys: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``{key: (mean, MAD)}`` for conditioning properties ``keys`` from a stats dict."""
    props = stats["properties"]
    missing = [k for k in keys if k not in props["mean"]]
    if missing:
        raise ValueError(f"no statistics for properties {missing}; available: {', '.join(props['mean'])}")
    return {k: (float(props["mean"][k]), float(props["mad"][k])) for k in keys}
