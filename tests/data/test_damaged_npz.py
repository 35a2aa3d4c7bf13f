"""A damaged dataset or split ``.npz`` is one ValueError that names the file (the CLI prints it as one line)."""

import numpy as np
import pytest

from moldiff.data.arrays import MoleculeArrays, read_npz
from moldiff.data.splits import load_splits, save_splits


def _good(tmp_path):
    path = tmp_path / "mols.npz"
    MoleculeArrays.from_molecules([(["C", "H"], np.eye(3)[:2]), (["O"], np.ones((1, 3)))]).save(path)
    return path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_damaged_molecule_file_names_the_file(tmp_path, damage):
    path = _good(tmp_path)
    data = path.read_bytes()
    bad = {"truncate": data[: len(data) // 2], "garbage": b"not a zip at all", "empty": b"",
           "flip": data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:]}[damage]
    path.write_bytes(bad)
    with pytest.raises(ValueError) as info:
        MoleculeArrays.load(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg


def test_molecule_file_missing_a_key_names_the_file(tmp_path):
    path = _good(tmp_path)
    arrays = read_npz(path)
    del arrays["ptr"]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="mols.npz: damaged molecule file"):
        MoleculeArrays.load(path)


def test_damaged_split_file_names_the_file(tmp_path):
    path = tmp_path / "splits.npz"
    save_splits(path, {"train": np.arange(3), "valid": np.arange(3, 5)}, seed=0)
    assert load_splits(path)["valid"].tolist() == [3, 4]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="splits.npz: damaged or unreadable split file"):
        load_splits(path)
    with pytest.raises(FileNotFoundError):
        load_splits(tmp_path / "missing.npz")


def test_loader_context_uses_the_one_normaliser():
    """MolLoader normalises with ContextNormalizer: the same float64 bits as ``(c - mean) / MAD``."""
    from moldiff.conditioning import ContextNormalizer
    from moldiff.data.loader import MolLoader
    from moldiff.types import ContextNormalizer as Leaf

    assert ContextNormalizer is Leaf
    vals = np.array([1.0, 2.5, -3.25, 7.0]) / 3
    arrays = MoleculeArrays.from_molecules([(["C"], np.zeros((1, 3)))] * 4, properties={"y": vals})
    loader = MolLoader(arrays, context_keys=("y",), context_norms={"y": (0.7, 1.3)}, batch_size=4)
    assert loader._context[:, 0].tobytes() == ((vals - 0.7) / 1.3).tobytes()
