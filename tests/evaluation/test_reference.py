import pytest
from eval_helpers import METHANE, WATER, benzene

from moldiff.evaluation import edm_reference_smiles, load_reference_smiles, save_reference_smiles


def test_edm_reference_keeps_whole_molecule_and_drops_failures(tmp_path):
    import numpy as np

    disconnected = (METHANE[0] + WATER[0], np.vstack([METHANE[1], WATER[1] + 9]))
    smiles = edm_reference_smiles([METHANE, benzene(cc=1.36), disconnected, (["C"], [[0, 0]])])
    assert smiles == ["[H]C([H])([H])[H]", "[H]C([H])([H])[H].[H]O[H]"]  # no largest-fragment step


def test_roundtrip_deterministic(tmp_path):
    a, b = tmp_path / "a.txt.gz", tmp_path / "b.txt.gz"
    save_reference_smiles(a, ["C", "O", "C"])
    save_reference_smiles(b, ["O", "C"])
    assert a.read_bytes() == b.read_bytes()
    assert load_reference_smiles(a) == {"C", "O"}
    (tmp_path / "c.txt").write_text("N\n\nO\n")
    assert load_reference_smiles(tmp_path / "c.txt") == {"N", "O"}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_reference_smiles(tmp_path / "nope.txt.gz")


def test_committed_qm9_reference_if_present():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "data" / "qm9" / "train_smiles.txt.gz"
    if not path.is_file():
        pytest.skip("reference not generated")
    ref = load_reference_smiles(path)
    assert len(ref) == 97627 and "[H]C([H])([H])[H]" in ref
