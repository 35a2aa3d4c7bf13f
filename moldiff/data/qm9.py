"""QM9 (130,831 molecules) read from the ``qm9pack==1.0.3`` wheel and cached as one ``.npz``.

The wheel ships the QM9 figshare release as three CSV files, with the 3,054 "uncharacterized"
molecules already removed. Molecules are sorted by GDB index, which is EDM's row order (see
``shared/reference/edm_protocol.md`` §3). Units follow EDM: mu in D, alpha in Bohr³, homo/lumo/gap
in meV, Cv in cal/(mol K) with the atom reference subtracted (``Cv − 2.981·N_atoms``).

QM9 ships no bonds; ``load_qm9(bonds=True)`` (what ``moldiff data prepare`` runs) derives kekulised
bonds and formal charges from the geometry and the SMILES (:mod:`moldiff.data.qm9_bonds`, ~1 min on
one core) and adds them to the cache, upgrading a cache written without them.

The ``qm9pack`` package is located with ``importlib`` and never imported (its ``__init__`` needs
``pkg_resources``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final

import numpy as np

from moldiff.constants import ATOMIC_NUMBERS, CV_ATOMREF, HARTREE_TO_EV, QM9_ELEMENTS
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.registry import Dataset, register_dataset

QM9_NUM_MOLECULES: Final[int] = 130_831
QM9_SOURCE: Final[str] = "qm9pack==1.0.3"
_CSV_FILES: Final[tuple[str, ...]] = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_HARTREE_TO_MEV: Final[float] = HARTREE_TO_EV * 1000.0

#: property key -> (CSV column, factor applied to the CSV value, unit after conversion).
QM9_PROPERTY_COLUMNS: Final[dict[str, tuple[str, float, str]]] = {
    "mu": ("Dipole_debye", 1.0, "D"),
    "alpha": ("Polarizability_bohr3", 1.0, "Bohr^3"),
    "homo": ("HOMO_au", _HARTREE_TO_MEV, "meV"),
    "lumo": ("LUMO_au", _HARTREE_TO_MEV, "meV"),
    "gap": ("HOMO_LUMO_gap_au", _HARTREE_TO_MEV, "meV"),
    "r2": ("R2_bohr2", 1.0, "Bohr^2"),
    "zpve": ("ZPVE_au", _HARTREE_TO_MEV, "meV"),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV, "eV"),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV, "eV"),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV, "eV"),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV, "eV"),
    "Cv_raw": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)"),
}
#: Units of every property key of :func:`load_qm9` (``Cv`` is thermo-subtracted; U0/U/H/G are not).
QM9_PROPERTY_UNITS: Final[dict[str, str]] = {
    **{k: unit for k, (_, _, unit) in QM9_PROPERTY_COLUMNS.items()},
    "Cv": "cal/(mol K)",
}
_CACHE_VERSION: Final[int] = 1


def data_root() -> Path:
    """Directory holding moldiff's datasets.

    ``$MOLDIFF_DATA_DIR`` if set; else the repository's ``data/`` directory when moldiff runs from a
    checkout; else ``~/.cache/moldiff``.
    """
    env = os.environ.get("MOLDIFF_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import moldiff

    repo_data = Path(moldiff.__file__).resolve().parents[1] / "data"
    if repo_data.is_dir():
        return repo_data
    return Path.home() / ".cache" / "moldiff"


def qm9pack_dir() -> Path:
    """The ``data/`` directory of the installed ``qm9pack`` wheel.

    Raises:
        FileNotFoundError: if ``qm9pack`` is not installed or lacks its CSV files.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("QM9 needs the qm9pack wheel: pip install qm9pack==1.0.3")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f for f in _CSV_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack at {folder} lacks {missing}")
    return folder


def qm9_cache_path(root: str | Path | None = None) -> Path:
    """``<root>/qm9/processed/qm9.npz``."""
    return Path(root if root is not None else data_root()) / "qm9" / "processed" / "qm9.npz"


def _parse_csv(path: Path) -> dict[str, np.ndarray]:
    """Read one qm9pack CSV into flat arrays with vectorised string handling."""
    import pandas as pd

    cols = ["XYZ_file", "Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"]
    cols += [c for c, _, _ in QM9_PROPERTY_COLUMNS.values()]
    df = pd.read_csv(path, usecols=cols)
    n_atoms = df["N_atoms"].to_numpy(np.int64)
    strip = str.maketrans("", "", "[]' ")
    elements = ",".join(df["Elements"].tolist()).translate(strip).split(",")
    coords = ",".join(df["XYZ_Ang"].tolist()).translate(strip).replace("*^", "e").split(",")
    if len(elements) != n_atoms.sum() or len(coords) != 3 * n_atoms.sum():
        raise ValueError(f"{path}: atom counts disagree with N_atoms")
    symbols, inverse = np.unique(np.array(elements), return_inverse=True)
    unknown = sorted(set(symbols.tolist()) - set(QM9_ELEMENTS))
    if unknown:
        raise ValueError(f"{path}: unexpected elements {unknown}")
    z = np.array([ATOMIC_NUMBERS[s] for s in symbols], dtype=np.uint8)[inverse]
    out = {
        "index": df["Index"].to_numpy(np.int64),
        "names": df["XYZ_file"].str.replace(".xyz", "", regex=False).to_numpy(str),
        "smiles": df["SMILES"].to_numpy(str),
        "n_atoms": n_atoms,
        "atomic_numbers": z,
        "pos": np.array(coords, dtype=np.float64).reshape(-1, 3).astype(np.float32),
    }
    for key, (col, factor, _) in QM9_PROPERTY_COLUMNS.items():
        out[key] = df[col].to_numpy(np.float64) * factor
    return out


def build_qm9(progress: bool = True) -> MoleculeArrays:
    """Parse QM9 from the qm9pack CSVs (about 5-10 s on 2 cores), sorted by GDB index.

    Args:
        progress: show a tqdm bar over the three CSV files.

    Returns:
        All 130,831 molecules with the properties of :data:`QM9_PROPERTY_UNITS`.
    """
    from tqdm.auto import tqdm

    folder = qm9pack_dir()
    parts = [_parse_csv(folder / f) for f in tqdm(_CSV_FILES, desc="QM9: parsing CSV", disable=not progress)]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cat["index"], kind="stable")
    ptr = np.concatenate([[0], np.cumsum(cat["n_atoms"])]).astype(np.int64)
    arrays = MoleculeArrays(
        pos=cat["pos"],
        atomic_numbers=cat["atomic_numbers"],
        ptr=ptr,
        elements=QM9_ELEMENTS,
        names=cat["names"],
        index=cat["index"],
        properties={k: cat[k] for k in QM9_PROPERTY_COLUMNS},
        smiles=cat["smiles"],
    )
    if not np.all(order == np.arange(len(order))):
        arrays = arrays.subset(order)
    if arrays.num_molecules != QM9_NUM_MOLECULES or np.any(np.diff(arrays.index) <= 0):
        raise ValueError(f"qm9pack gave {arrays.num_molecules} molecules, expected {QM9_NUM_MOLECULES}")
    props = dict(arrays.properties)
    props["Cv"] = props["Cv_raw"] - CV_ATOMREF * arrays.n_atoms
    return replace(arrays, properties=props)


def qm9_bond_report_path(root: str | Path | None = None) -> Path:
    """``<root>/qm9/processed/bond_report.tsv``: the molecules whose bonds were not taken from the SMILES."""
    return qm9_cache_path(root).with_name("bond_report.tsv")


def load_qm9(
    root: str | Path | None = None,
    progress: bool = True,
    rebuild: bool = False,
    log: Callable[[str], None] | None = None,
    bonds: bool = False,
) -> MoleculeArrays:
    """Load QM9, building the cache ``<root>/qm9/processed/qm9.npz`` on first use.

    Args:
        root: data directory (default :func:`data_root`).
        progress: show a progress bar while building.
        rebuild: ignore an existing cache.
        log: called with one line when the cache is built.
        bonds: make sure the cache holds bonds: derive them (:mod:`moldiff.data.qm9_bonds`) when it
            does not, write ``bond_report.tsv`` next to it and save it again (atomically). Without
            it a cache is returned as it is, with or without bonds.

    Returns:
        The 130,831 QM9 molecules, row ``i`` = ``i``-th smallest GDB index.

    Example:
        >>> qm9 = load_qm9(progress=False)  # doctest: +SKIP
        >>> qm9.num_molecules, qm9.elements  # doctest: +SKIP
        (130831, ('H', 'C', 'N', 'O', 'F'))
    """
    path = qm9_cache_path(root)
    arrays = None
    if path.is_file() and not rebuild:
        try:
            cached = MoleculeArrays.load(path)
            if cached.num_molecules == QM9_NUM_MOLECULES and "Cv" in cached.properties:
                if cached.has_bonds or not bonds:
                    return cached
                arrays = cached  # a cache without bonds: add them below
        except (ValueError, OSError, KeyError):
            pass  # stale or corrupt cache: rebuild below
    if arrays is None:
        arrays = build_qm9(progress=progress)
    if bonds:
        from moldiff.data.qm9_bonds import derive_dataset_bonds, write_bond_report

        arrays, report = derive_dataset_bonds(arrays, progress=progress, log=log)
        write_bond_report(qm9_bond_report_path(root), report, arrays)
    arrays.save(path)
    if log is not None:
        log(f"wrote {path}")
    return arrays


class QM9Dataset(Dataset):
    """QM9 as a registered dataset: molecules from the wheel, EDM's splits, statistics on first use."""

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__("qm9", root)

    def load(self) -> MoleculeArrays:
        """The 130,831 molecules (see :func:`load_qm9`)."""
        return load_qm9(root=self.root, progress=False)

    def split(self, name: str) -> np.ndarray:
        """EDM's ``train`` / ``valid`` / ``test`` / ``first_half`` / ``second_half`` rows."""
        from moldiff.data.splits import qm9_split

        return qm9_split(name, self.root)

    def stats(self) -> dict:
        """``<root>/qm9/stats.json``, written by :func:`~moldiff.data.datasets.prepare_qm9` if missing."""
        from moldiff.data.datasets import prepare_qm9
        from moldiff.data.statistics import read_stats

        path = self.directory / "stats.json"
        if not path.is_file():
            prepare_qm9(root=self.root, progress=False)
        return read_stats(path)


register_dataset("qm9", QM9Dataset)
