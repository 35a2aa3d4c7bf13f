"""Drug-like benchmark (moldiff.evaluation.druglike_benchmark) and `moldiff evaluate --reference NAME`."""

import gzip
import json

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from moldiff.cli import main
from moldiff.evaluation import druglike_benchmark as db
from moldiff.evaluation import moses_metrics as mm
from moldiff.io import read_molecules

SMILES = ["CCOC(=O)c1ccc(N)cc1", "CC(=O)Nc1ccc(O)cc1", "C[NH+](C)CCc1ccccc1", "CC(=O)Nc1ccc(O)cc1"]
pytestmark = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("moses"), reason="molsets (MOSES SMILES) not installed")


def _sdf(path, smiles=SMILES, broken=False):
    writer = Chem.SDWriter(str(path))
    for k, s in enumerate(smiles):
        m = Chem.AddHs(Chem.MolFromSmiles(s))
        AllChem.EmbedMolecule(m, randomSeed=k)
        AllChem.MMFFOptimizeMolecule(m)
        if broken and k == 0:  # a pentavalent carbon: invalid with its own bonds
            m = Chem.RWMol(m)
            m.GetAtomWithIdx(0).SetNoImplicit(True)
            m.AddBond(0, 3, Chem.BondType.DOUBLE)
        m.SetProp("_Name", f"m{k}")
        writer.write(m)
    writer.close()
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "tiny").mkdir(parents=True)
    with gzip.open(root / "tiny" / "train_smiles.txt.gz", "wt") as fh:
        fh.write("CC(=O)Nc1ccc(O)cc1\nc1ccccc1\nCCO\n")
    monkeypatch.setenv("MOLDIFF_DATA_DIR", str(root))
    return root


def test_benchmark_molecules_with_own_bonds(tmp_path, data_dir):
    ref = db.load_reference("tiny", data_dir, n_test=60, seed=1)
    assert ref.novelty == {"CC(=O)Nc1ccc(O)cc1", "c1ccccc1", "CCO"}
    assert len(ref.moses["smiles"]) == 60
    assert list((data_dir / ".build" / "moses_reference").glob("moses_test_n60_seed1_*.npz"))
    records = read_molecules(_sdf(tmp_path / "g.sdf", broken=True), strict=False)
    table, s = db.benchmark_molecules(records, ref)
    assert list(table["valid_bonds"]) == [False, True, True, True]
    assert table.loc[2, "smiles"] == "C[NH+](C)CCc1ccccc1"  # formal charge from the file
    assert s["validity"] == pytest.approx(0.75) and s["validity_connected"] == pytest.approx(0.75)
    assert s["uniqueness"] == pytest.approx(2 / 3)
    assert s["novelty"] == pytest.approx(0.5)  # paracetamol is in the training SMILES
    assert 0 < s["snn"] <= 1 and 0 <= s["intdiv1"] < 1 and s["posebusters_pass_valid"] == 1.0
    assert s["median_strain"] < 1.0  # MMFF-optimised input: no strain
    assert s["validity_rdkit"] >= 0.75
    # the cached reference gives the same statistics
    again = db.load_reference("tiny", data_dir, n_test=60, seed=1)
    assert again.moses["smiles"] == ref.moses["smiles"] and again.moses["frag"] == ref.moses["frag"]
    text = db.format_drug_summary(s)
    assert "SNN to MOSES test" in text and "valid, own bonds" in text
    assert db.markdown_table({"a": s}).startswith("| metric | a |")
    png = db.plot_distributions({"a": db.table_properties(table)}, ref.properties, tmp_path / "d.png")
    assert png.stat().st_size > 1000


def test_posebusters_failures_by_check(tmp_path, data_dir):
    """The summary says which PoseBusters checks the valid molecules fail: a stretched molecule fails
    the bond-length check (and so the pass rate), the relaxed one fails nothing."""
    path = _sdf(tmp_path / "g.sdf", SMILES[:2])
    mols = [m for m in Chem.SDMolSupplier(str(path), removeHs=False)]
    conf = mols[1].GetConformer()
    for i in range(mols[1].GetNumAtoms()):
        conf.SetAtomPosition(i, conf.GetAtomPosition(i) * 1.35)
    writer = Chem.SDWriter(str(path))
    for m in mols:
        writer.write(m)
    writer.close()
    ref = db.load_reference("tiny", data_dir, n_test=40, seed=1)
    table, s = db.benchmark_molecules(read_molecules(path), ref, strain=False)
    assert list(table["pb_bond_lengths"]) == [True, False]
    assert s["validity"] == 1.0 and s["posebusters_pass"] == pytest.approx(0.5)
    assert s["posebusters_fail_bond_lengths"] == pytest.approx(0.5)
    assert s["posebusters_fail_sanitization"] == 0.0 and s["posebusters_fail_all_atoms_connected"] == 0.0
    assert {f"posebusters_fail_{c[3:]}" for c in db.geometry.POSEBUSTERS_COLUMNS} <= set(s)
    assert "fails bond lengths (of valid)" in db.format_drug_summary(s)


def test_evaluate_reference_dataset_cli(tmp_path, data_dir, capsys):
    out = tmp_path / "s.json"
    rc = main(["evaluate", str(_sdf(tmp_path / "g.sdf")), "--reference", "tiny", "--reference-size", "40",
               "--json", str(out), "--csv", str(tmp_path / "t.csv")])
    assert rc == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["num_molecules"] == 4 and summary["validity_bonds"] == 1.0
    assert result["reference"]["moses_test_sample"] == 40
    if mm.FCD_AVAILABLE:
        assert summary["fcd"] > 0
    assert "Frag similarity" in capsys.readouterr().out


def test_evaluate_unknown_reference_is_one_line_exit_2(tmp_path, data_dir, capsys):
    rc = main(["evaluate", str(_sdf(tmp_path / "g.sdf", SMILES[:1])), "--reference", "nonesuch"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "unknown reference 'nonesuch'" in err and "moses" in err
