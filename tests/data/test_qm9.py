import numpy as np
import pytest

from moldiff.constants import CV_ATOMREF, HARTREE_TO_EV, QM9_ELEMENTS
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.qm9 import QM9_PROPERTY_UNITS, data_root, load_qm9, qm9_cache_path


@pytest.fixture(scope="module")
def qm9():
    return load_qm9(progress=False)  # builds the git-ignored cache once (~6 s), then ~0.1 s


def test_shape_order_and_vocabulary(qm9):
    assert qm9.num_molecules == 130_831 and qm9.num_atoms_total == 2_359_210
    assert qm9.elements == QM9_ELEMENTS == ("H", "C", "N", "O", "F")
    assert qm9.pos.dtype == np.float32 and qm9.atomic_numbers.dtype == np.uint8 and qm9.ptr.dtype == np.int64
    assert np.all(np.diff(qm9.index) > 0) and qm9.index[0] == 1  # sorted by GDB index
    assert qm9.n_atoms.min() == 3 and qm9.n_atoms.max() == 29
    assert qm9.names[0] == "dsgdb9nsd_000001" and qm9.smiles[0] == "C"
    assert set(QM9_PROPERTY_UNITS) == set(qm9.properties)


def test_first_molecule_is_methane(qm9):
    symbols, pos = qm9.molecule(0)
    assert symbols == ["C", "H", "H", "H", "H"]
    np.testing.assert_allclose(pos[0], [-0.0126981359, 1.0858041578, 0.0080009958], atol=1e-6)
    assert qm9.properties["alpha"][0] == pytest.approx(13.21)
    assert qm9.properties["homo"][0] == pytest.approx(-0.3877 * HARTREE_TO_EV * 1000)
    assert qm9.properties["gap"][0] == pytest.approx(0.5048 * 27211.386, rel=1e-6)
    assert qm9.properties["Cv_raw"][0] == pytest.approx(6.469)


def test_cv_is_thermo_subtracted(qm9):
    np.testing.assert_allclose(
        qm9.properties["Cv"], qm9.properties["Cv_raw"] - CV_ATOMREF * qm9.n_atoms, rtol=0, atol=1e-12
    )


def test_cache_reload_reads_the_cache_not_the_csv(qm9, monkeypatch):
    import moldiff.data.qm9 as qm9_module

    assert qm9_cache_path().is_file()

    def no_parse(*_args, **_kwargs):
        raise AssertionError("load_qm9 re-parsed the CSV although the cache is current")

    monkeypatch.setattr(qm9_module, "_parse_csv", no_parse)
    monkeypatch.setattr(qm9_module, "build_qm9", no_parse)
    again = load_qm9(progress=False)
    np.testing.assert_array_equal(again.pos, qm9.pos)
    np.testing.assert_array_equal(again.properties["gap"], qm9.properties["gap"])


def test_subset_and_remove_h(qm9):
    sub = qm9.subset([2, 0])
    assert sub.names.tolist() == ["dsgdb9nsd_000003", "dsgdb9nsd_000001"]
    assert sub.molecule(1)[0] == ["C", "H", "H", "H", "H"]
    heavy = sub.remove_hydrogens()
    assert heavy.elements == ("C", "N", "O", "F") and heavy.n_atoms.tolist() == [1, 1]


def test_arrays_save_load_roundtrip(tmp_path):
    arrays = MoleculeArrays.from_molecules(
        [(["O", "H", "H"], np.arange(9.0).reshape(3, 3)), (["C"], np.zeros((1, 3)))],
        names=["w", "c"], properties={"y": [1.0, 2.0]},
    )
    assert arrays.elements == ("H", "C", "O")
    arrays.save(tmp_path / "a.npz")
    back = MoleculeArrays.load(tmp_path / "a.npz")
    assert repr(back) == repr(arrays) and back.names.tolist() == ["w", "c"]
    np.testing.assert_array_equal(back.type_index, [2, 0, 0, 1])
    with pytest.raises(FileNotFoundError):
        MoleculeArrays.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a moldiff"):
        MoleculeArrays.load(tmp_path / "other.npz")


def test_arrays_validation():
    with pytest.raises(ValueError, match="unknown element"):
        MoleculeArrays.from_molecules([(["Xx"], np.zeros((1, 3)))])
    with pytest.raises(ValueError, match="one position per atom"):
        MoleculeArrays.from_molecules([(["H", "H"], np.zeros((1, 3)))])
    with pytest.raises(IndexError):
        MoleculeArrays.from_molecules([(["H"], np.zeros((1, 3)))]).subset([3])


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MOLDIFF_DATA_DIR", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("MOLDIFF_DATA_DIR")
    assert data_root().name in ("data", "moldiff")
