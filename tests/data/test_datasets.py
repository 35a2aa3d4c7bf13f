from pathlib import Path

import numpy as np
import pytest

from moldiff.cli import main
from moldiff.data import get_split, import_dataset, load_dataset, load_stats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("fmt", ["xyz", "sdf"])
def test_import_and_load(tmp_path, fmt):
    target = import_dataset(FIXTURES / f"small_mols.{fmt}", "mine", root=tmp_path, seed=1)
    assert target == tmp_path / "mine"
    files = sorted(p.name for p in target.rglob("*") if p.is_file())
    assert files == ["mine.npz", "splits.npz", "stats.json"]
    arrays = load_dataset("mine", root=tmp_path)
    assert arrays.num_molecules == 3 and arrays.elements == ("H", "C", "N", "O")
    assert arrays.names.tolist() == ["ethanol", "hydrogen_cyanide", "furan"]
    assert load_dataset(target).num_molecules == 3  # by directory
    assert load_dataset(target / "processed" / "mine.npz").num_molecules == 3
    rows = np.concatenate([get_split(s, "mine", root=tmp_path) for s in ("train", "valid", "test")])
    assert sorted(rows.tolist()) == [0, 1, 2]
    stats = load_stats("mine", root=tmp_path)
    assert stats["elements"] == ["H", "C", "N", "O"] and stats["provenance"]["split_seed"] == 1
    assert ("score" in arrays.properties) == (fmt == "sdf")
    with pytest.raises(ValueError, match="already exists"):
        import_dataset(FIXTURES / f"small_mols.{fmt}", "mine", root=tmp_path)
    import_dataset(FIXTURES / f"small_mols.{fmt}", "mine", root=tmp_path, overwrite=True)


def test_bad_import_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nok\nH 0 0 0\nH 0 0 0.7\n1\nbroken\nQq 0 0 0\n")
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="record 2: unknown element"):
        import_dataset(bad, "x", root=root)
    assert not root.exists() or list(root.iterdir()) == []
    with pytest.raises(ValueError, match="invalid dataset name"):
        import_dataset(FIXTURES / "small_mols.xyz", "qm9", root=root)
    with pytest.raises(ValueError, match="invalid dataset name"):
        import_dataset(FIXTURES / "small_mols.xyz", "../evil", root=root)
    with pytest.raises(FileNotFoundError):
        load_dataset("absent", root=root)


def test_cli_data_import(tmp_path, capsys):
    args = ["--name", "cli", "--root", str(tmp_path)]
    assert main(["data", "import", str(FIXTURES / "small_mols.sdf"), *args]) == 0
    capsys.readouterr()
    assert (tmp_path / "cli" / "processed" / "cli.npz").is_file()
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nw\nO 0 0 0\n")
    code = main(["data", "import", str(bad), "--name", "b", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "record 1: truncated" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    assert main(["data", "import", str(tmp_path / "none.sdf"), "--name", "c", "--root", str(tmp_path)]) == 2
