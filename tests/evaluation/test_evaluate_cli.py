import json

import pandas as pd
import pytest
from eval_helpers import GOLDEN

from moldiff.cli import _parse_args, main

BAD_XYZ = (
    "2\nok\nH 0 0 0\nH 0.74 0 0\n"
    "3\nbad coord\nC 0 0 0\nC 1 x 0\nH 0 0 1\n"
    "2\nnan\nC 0 0 0\nC nan 0 0\n"
    "2\nunknown\nC 0 0 0\nXx 1.5 0 0\n"
)


def test_parse_args():
    a = _parse_args(["evaluate", "f.xyz", "--json", "o.json", "--csv", "o.csv", "--workers", "2",
                     "--reference", "qm9", "--checks", "edm,druglike"])
    assert (a.file, a.json, a.csv, a.workers, a.reference, a.checks) == \
        ("f.xyz", "o.json", "o.csv", 2, "qm9", "edm,druglike")


def test_evaluate_golden_writes_json_and_csv(tmp_path, capsys):
    ref = tmp_path / "ref.txt"
    ref.write_text("[H]C([H])([H])[H]\n")
    out_json, out_csv = tmp_path / "s.json", tmp_path / "r.csv"
    rc = main(["evaluate", str(GOLDEN), "--json", str(out_json), "--csv", str(out_csv),
               "--reference", str(ref)])
    assert rc == 0
    summary = json.loads(out_json.read_text())
    for key in ("num_molecules", "atom_stability", "mol_stability", "validity", "validity_connected",
                "uniqueness", "novelty"):
        assert key in summary
        assert key == "num_molecules" or 0 <= summary[key] <= 1
    assert summary["num_molecules"] == 8 and summary["mol_stability"] == pytest.approx(3 / 8)
    table = pd.read_csv(out_csv)
    assert {"mol_stable", "n_stable_atoms", "n_atoms", "valid", "smiles", "reason"} <= set(table.columns)
    assert len(table) == 8
    assert "mol_stability" in capsys.readouterr().out


def test_malformed_records_scored(tmp_path):
    f = tmp_path / "m.xyz"
    f.write_text(BAD_XYZ)
    out_csv = tmp_path / "r.csv"
    assert main(["evaluate", str(f), "--csv", str(out_csv)]) == 0
    table = pd.read_csv(out_csv)
    assert table["mol_stable"].tolist() == [True, False, False, False]
    assert table["reason"].isna().tolist() == [True, False, False, False]


@pytest.mark.parametrize("content", [None, "this is not a molecule file\n"])
def test_unreadable_file_exit_2(tmp_path, capsys, content):
    f = tmp_path / "x.xyz"
    if content is not None:
        f.write_text(content)
    assert main(["evaluate", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moldiff: error:")


def test_unknown_check_exit_2(capsys):
    assert main(["evaluate", str(GOLDEN), "--checks", "foo"]) == 2
    assert "allowed" in capsys.readouterr().err
