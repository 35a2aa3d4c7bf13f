"""moldiff.relax (MMFF94 and GFN2-xTB) and ``moldiff relax`` / ``moldiff sample --relax``."""

import json

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from moldiff.cli import main
from moldiff.io import read_molecules
from moldiff.relax import relax_molecules, summarize_relaxation, xtb_available

needs_xtb = pytest.mark.skipif(not xtb_available(), reason="tblite not installed")


def _distorted(smiles: str, seed: int = 0, scale: float = 0.15):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    pos = mol.GetConformer().GetPositions()
    pos += np.random.default_rng(seed).normal(scale=scale, size=pos.shape)
    conf = mol.GetConformer()
    for i, p in enumerate(pos):
        conf.SetAtomPosition(i, p.tolist())
    return mol


def _pos(mol):
    return np.asarray(mol.GetConformer().GetPositions())


@pytest.mark.parametrize("method", ["mmff", pytest.param("xtb", marks=needs_xtb)])
def test_relax_lowers_energy_and_keeps_fixed_atoms(method):
    mols = [_distorted("CCO"), _distorted("C=O", seed=1)]
    before = [_pos(m) for m in mols]
    res = relax_molecules(mols, method, fixed_atoms=[0, 1])
    for r, p0, m in zip(res, before, mols, strict=True):
        assert r.ok and r.error is None and r.converged
        assert r.energy_after < r.energy_before
        p1 = _pos(r.mol)
        assert np.array_equal(p1[[0, 1]], p0[[0, 1]])  # fixed atoms bit-identical
        assert r.rmsd > 0.01
        assert np.array_equal(_pos(m), p0)  # the input is not modified
        assert [a.GetSymbol() for a in r.mol.GetAtoms()] == [a.GetSymbol() for a in m.GetAtoms()]


@needs_xtb
def test_xtb_relaxes_bond_lengths_to_physical_values():
    mol = _distorted("C", scale=0.2)
    r = relax_molecules([mol], "xtb")[0]
    d = np.linalg.norm(_pos(r.mol)[1:] - _pos(r.mol)[0], axis=1)
    assert np.allclose(d, 1.09, atol=0.02)  # GFN2 C-H bond length


def test_mmff_reports_unsanitizable_molecule_and_goes_on():
    bad = Chem.RWMol()
    for s in ("C", "C", "C", "C", "C", "C"):
        bad.AddAtom(Chem.Atom(s))
    for j in range(1, 6):  # pentavalent carbon
        bad.AddBond(0, j, Chem.BondType.SINGLE)
    bad = bad.GetMol()
    conf = Chem.Conformer(6)
    for i in range(6):
        conf.SetAtomPosition(i, (1.5 * i, 0.0, 0.0))
    bad.AddConformer(conf)
    good = _distorted("CC")
    res = relax_molecules([bad, good, None], "mmff")
    assert not res[0].ok and "sanitization failed" in res[0].error
    assert np.array_equal(_pos(res[0].mol), _pos(bad))  # unchanged
    assert res[1].ok and not res[2].ok
    s = summarize_relaxation(res)
    assert (s["molecules"], s["relaxed"], s["failed"]) == (3, 1, 2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown relaxation method"):
        relax_molecules([], "uff")
    with pytest.raises(ValueError, match="max_iters"):
        relax_molecules([], "mmff", max_iters=0)
    r = relax_molecules([_distorted("C")], "mmff", fixed_atoms=[7])[0]
    assert not r.ok and "out of range" in r.error


def test_missing_tblite_names_the_extra(monkeypatch):
    import moldiff.relax as relax

    monkeypatch.setattr(relax, "xtb_available", lambda: False)
    with pytest.raises(ValueError, match=r"moldiff\[xtb\]"):
        relax.relax_molecules([_distorted("C")], "xtb")


@pytest.mark.parametrize("method", ["mmff", pytest.param("xtb", marks=needs_xtb)])
def test_cli_relax_writes_labelled_sdf(method, tmp_path, capsys):
    src, out, js = tmp_path / "in.sdf", tmp_path / "out.sdf", tmp_path / "r.json"
    w = Chem.SDWriter(str(src))
    for m in (_distorted("CCO"), _distorted("CN", seed=2)):
        w.write(m)
    w.close()
    assert main(["relax", str(src), "--out", str(out), "--method", method, "--fixed", "1", "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert f"relaxation ({method}): 2/2 relaxed" in printed and "kcal/mol" in printed
    before, after = read_molecules(src), read_molecules(out)
    assert [r.symbols for r in before] == [r.symbols for r in after]
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.pos[0], b.pos[0])
        assert not np.allclose(a.pos, b.pos)
    assert "moldiff_energy_after_kcal" in out.read_text()
    rows = json.loads(js.read_text())["molecules"]
    assert all(r["ok"] and r["energy_after_kcal"] < r["energy_before_kcal"] for r in rows)


def test_cli_relax_bad_input_exit_2_no_output(tmp_path, capsys):
    out = tmp_path / "out.sdf"
    bad = tmp_path / "bad.sdf"
    bad.write_text("this is not a molecule\n")
    for argv in (["relax", str(tmp_path / "missing.sdf"), "--out", str(out)],
                 ["relax", str(bad), "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moldiff: error:")
        assert not out.exists()


def test_sample_relax_labels_metrics(tmp_path, capsys):
    out = tmp_path / "s.sdf"
    assert main(["sample", "--num", "3", "--steps", "5", "--out", str(out), "--relax", "mmff"]) == 0
    printed = capsys.readouterr().out
    assert "model samples (before relaxation)" in printed
    assert "after mmff relaxation (post-processing, not a model metric)" in printed
    assert "relaxation (mmff):" in printed
    assert len(read_molecules(out)) == 3
