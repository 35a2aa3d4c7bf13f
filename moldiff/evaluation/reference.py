"""Novelty reference: training-split SMILES built EDM's way, cached as a gzipped text file.

EDM (``qm9/rdkit_functions.py::compute_qm9_smiles``) builds every training molecule with the same
bond tables, sanitises the **whole** molecule (no largest-fragment step) and keeps its canonical
SMILES; molecules that fail to sanitise are dropped and disconnected ones keep their ``.``-joined
SMILES. The file holds the distinct SMILES, sorted, one per line (novelty only tests membership).

The QM9 file is ``<data_root>/qm9/train_smiles.txt.gz``; the CLI (``moldiff evaluate --reference
qm9``) and ``benchmarks/quality/qm9_data_metrics.py --write-reference`` regenerate it from the data layer
(this module does not import it: evaluation is a leaf).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rdkit.rdBase import BlockLogs

from moldiff.evaluation.build import build_edm_mol, to_molecules
from moldiff.evaluation.stability import bond_order_matrix
from moldiff.evaluation.validity import sanitize_smiles
from moldiff.io import atomic_write

__all__ = ["edm_reference_smiles", "save_reference_smiles", "load_reference_smiles", "REFERENCE_FILENAME"]

#: File name of a dataset's cached training SMILES inside ``<data_root>/<dataset>/``.
REFERENCE_FILENAME = "train_smiles.txt.gz"


def edm_reference_smiles(molecules: Sequence[Any]) -> list[str]:
    """Whole-molecule SMILES of the sanitisable molecules, as EDM's ``compute_qm9_smiles``.

    Args:
        molecules: Inputs accepted by :func:`~moldiff.evaluation.build.to_molecule`.

    Returns:
        One SMILES per molecule that sanitises, in input order (malformed ones are skipped).

    >>> edm_reference_smiles([(["H", "H"], [[0, 0, 0], [0.74, 0, 0]])])
    ['[H][H]']
    """
    out: list[str] = []
    with BlockLogs():
        for mol in to_molecules(molecules):
            if mol.error is not None:
                continue
            smiles, _ = sanitize_smiles(build_edm_mol(mol.symbols, bond_order_matrix(mol.symbols, mol.pos)))
            if smiles is not None:
                out.append(smiles)
    return out


def save_reference_smiles(path: str | Path, smiles: Iterable[str]) -> Path:
    """Write the distinct SMILES, sorted, gzip-compressed (deterministic bytes), atomically.

    Args:
        path: Target ``.txt.gz`` file.
        smiles: SMILES strings (duplicates allowed).

    Returns:
        The path written.
    """
    text = "\n".join(sorted(set(smiles))) + "\n"
    data = gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def load_reference_smiles(path: str | Path) -> set[str]:
    """Read a reference written by :func:`save_reference_smiles` (plain ``.txt`` also accepted).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such reference SMILES file")
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read reference SMILES ({exc})") from None
    return {line.strip() for line in text.splitlines() if line.strip()}
