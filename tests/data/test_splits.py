from pathlib import Path

import numpy as np
import pytest

from moldiff.data import get_split, load_qm9, qm9_splits, random_split
from moldiff.data.splits import load_splits
from moldiff.data.statistics import element_counts, n_atoms_histogram

REPO_DATA = Path(__file__).resolve().parents[2] / "data"

# EDM configs/datasets_config.py (commit d28fd52), verbatim.
EDM_QM9_N_NODES = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644, 13: 3060,
                   15: 7796, 25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136, 26: 48, 7: 16,
                   10: 362, 8: 49, 9: 124, 27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}
EDM_QM9_ATOM_TYPES = {1: 635559, 2: 101476, 0: 923537, 3: 140202, 4: 2323}
EDM_QM9_NO_H_N_NODES = {9: 83366, 8: 13625, 7: 2404, 6: 475, 5: 91, 4: 25, 3: 7, 1: 2, 2: 5}
EDM_SECOND_HALF_N_NODES = {19: 6944, 12: 845, 20: 4794, 21: 4962, 27: 132, 25: 754, 18: 6695, 14: 2587,
                           15: 3865, 22: 1701, 17: 6461, 16: 5344, 23: 2380, 13: 1541, 24: 267, 10: 178,
                           7: 7, 11: 412, 8: 25, 9: 62, 29: 15, 26: 17, 4: 3, 3: 1, 6: 5, 5: 3}
EDM_SECOND_HALF_ATOM_TYPES = {1: 317604, 2: 50852, 3: 70033, 0: 461622, 4: 1164}
ORDER = ("H", "C", "N", "O", "F")


@pytest.fixture(scope="module")
def qm9():
    return load_qm9(progress=False)


def test_split_sizes_partition_and_order():
    s = qm9_splits()
    assert {k: len(v) for k, v in s.items()} == {
        "train": 100_000, "valid": 17_748, "test": 13_083, "first_half": 50_000, "second_half": 50_000}
    allrows = np.concatenate([s["train"], s["valid"], s["test"]])
    np.testing.assert_array_equal(np.sort(allrows), np.arange(130_831))
    for k in ("train", "valid", "test"):
        assert np.all(np.diff(s[k]) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([s["first_half"], s["second_half"]])), s["train"])
    assert not np.all(np.diff(s["second_half"]) > 0)  # halves stay in EDM's permutation order


def test_legacy_random_state_equals_seeded_global():
    np.random.seed(0)
    np.testing.assert_array_equal(np.random.permutation(1000), np.random.RandomState(0).permutation(1000))


def test_committed_splits_file_matches_recomputation():
    path = REPO_DATA / "qm9" / "splits.npz"
    assert path.is_file(), "data/qm9/splits.npz missing: run `moldiff data prepare`"
    stored, fresh = load_splits(path), qm9_splits()
    for k, v in fresh.items():
        np.testing.assert_array_equal(stored[k], v)
        np.testing.assert_array_equal(get_split(k), v)
        np.testing.assert_array_equal(get_split(k, root=REPO_DATA), v)


def test_get_split_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown QM9 split"):
        get_split("training")
    np.testing.assert_array_equal(get_split("test", root=tmp_path), qm9_splits()["test"])  # regenerated


def test_train_histograms_equal_edm(qm9):
    train = get_split("train")
    assert n_atoms_histogram(qm9, train) == dict(sorted(EDM_QM9_N_NODES.items()))
    assert element_counts(qm9, train) == {ORDER[i]: c for i, c in sorted(EDM_QM9_ATOM_TYPES.items())}
    assert n_atoms_histogram(qm9.remove_hydrogens(), train) == dict(sorted(EDM_QM9_NO_H_N_NODES.items()))


def test_second_half_histograms_equal_edm(qm9):
    half = get_split("second_half")
    assert n_atoms_histogram(qm9, half) == dict(sorted(EDM_SECOND_HALF_N_NODES.items()))
    assert element_counts(qm9, half) == {ORDER[i]: c for i, c in sorted(EDM_SECOND_HALF_ATOM_TYPES.items())}


def test_random_split():
    s = random_split(101, seed=3)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [81, 10, 10]
    np.testing.assert_array_equal(np.sort(np.concatenate(list(s.values()))), np.arange(101))
    np.testing.assert_array_equal(random_split(101, seed=3)["valid"], s["valid"])
    assert random_split(1)["train"].tolist() == [0]
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(10, fractions=(0.5, 0.1, 0.1))
