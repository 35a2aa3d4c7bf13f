import numpy as np
import pytest
from eval_helpers import read_golden
from rdkit import Chem
from rdkit.Chem import AllChem

from moldiff.evaluation.druglike import SA_SCORE_AVAILABLE, check_druglike, check_rings
from moldiff.evaluation.geometry import POSEBUSTERS_COLUMNS, check_posebusters, check_strain
from moldiff.evaluation.validity import perceive_bonds_rdkit, quiet_stderr


def _qm9(name_part):
    name, s, p, _ = next(g for g in read_golden() if name_part in g[0])
    with quiet_stderr():
        mol, _ = perceive_bonds_rdkit(s, p)
    return mol


def test_druglike_values():
    r = check_druglike(Chem.AddHs(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")))["results"]  # aspirin
    assert r["mol_weight"] == pytest.approx(180.16, abs=0.01)
    assert r["lipinski_violations"] == 0
    assert 0 < r["qed"] < 1
    if SA_SCORE_AVAILABLE:
        assert 1 <= r["sa_score"] <= 3
    big = check_druglike(Chem.MolFromSmiles("C" * 40 + "O" * 0))["results"]
    assert big["lipinski_violations"] == 2  # MW > 500 and logP > 5


def test_ring_statistics():
    r = check_rings(Chem.MolFromSmiles("c1ccccc1C1CC1C1CCCCCCC1"))["results"]
    keys = ("n_rings", "n_aromatic_rings", "n_rings_3", "n_rings_6", "n_rings_large")
    assert tuple(r[k] for k in keys) == (3, 1, 1, 1, 1)
    assert r["max_ring_size"] == 8
    assert check_rings(Chem.MolFromSmiles("CCO"))["results"]["max_ring_size"] == 0


def test_posebusters_pass_real_and_fail_distorted():
    good = [_qm9("ethanol"), _qm9("benzene"), _qm9("acetonitrile")]
    bad = Chem.Mol(good[0])
    conf = bad.GetConformer()
    bond = next(b for b in bad.GetBonds()
                if b.GetBeginAtom().GetAtomicNum() > 1 < b.GetEndAtom().GetAtomicNum())
    a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
    pa, pb = np.array(conf.GetAtomPosition(a)), np.array(conf.GetAtomPosition(b))
    conf.SetAtomPosition(b, (pa + 1.8 * (pb - pa)).tolist())  # stretch a bond by 80 %
    res = check_posebusters([*good, None, bad])
    for r in res[:3]:
        assert r["results"]["pb_pass"], r
    assert res[3]["results"] == {}
    assert not res[4]["results"]["pb_pass"]
    assert set(POSEBUSTERS_COLUMNS) <= set(res[0]["results"])


def test_strain_zero_at_dft_minimum_positive_when_distorted():
    mol = _qm9("ethanol")
    r = check_strain(mol)["results"]
    assert abs(r["mmff_strain"]) < 0.5  # kcal/mol; QM9 geometries are near the MMFF minimum
    noisy = Chem.Mol(mol)
    rng = np.random.default_rng(0)
    conf = noisy.GetConformer()
    for i in range(noisy.GetNumAtoms()):
        q = conf.GetAtomPosition(i)
        d = rng.normal(scale=0.15, size=3)
        conf.SetAtomPosition(i, (q.x + d[0], q.y + d[1], q.z + d[2]))
    r2 = check_strain(noisy)["results"]
    assert r2["mmff_energy"] > r2["mmff_energy_restrained"] >= r2["mmff_energy_relaxed"] - 1e-6


def test_strain_untypable_is_nan():
    mol = Chem.AddHs(Chem.MolFromSmiles("[Hg]"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    assert np.isnan(check_strain(mol)["results"]["mmff_strain"])
