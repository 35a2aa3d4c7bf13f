"""MOSES metrics (moldiff.evaluation.moses_metrics) on tiny sets with known answers."""

import numpy as np
import pytest
from rdkit import Chem

from moldiff.evaluation import moses_metrics as mm

SMILES = ["CCOC(=O)c1ccc(NC2CC2)cc1", "c1ccc2[nH]ccc2c1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=C(O)c1ccccc1O",
          "CN1CCC[C@H]1c1cccnc1", "Clc1ccc(-c2ccccc2)cc1"]


def _mols(smiles=SMILES):
    return [Chem.MolFromSmiles(s) for s in smiles]


def test_canonical_smiles_drops_hydrogens_and_stereo():
    assert mm.canonical_smiles("[H]OC([H])([H])C") == "CCO"
    assert mm.canonical_smiles("C[C@H](N)O") == mm.canonical_smiles("CC(N)O")
    assert mm.canonical_smiles("not a smiles") is None


def test_snn_of_a_set_with_itself_is_one():
    fps = mm.fingerprints(_mols())
    assert mm.snn(fps, fps) == pytest.approx(1.0)
    assert mm.snn([], fps) != mm.snn([], fps)  # NaN


def test_snn_is_the_mean_nearest_tanimoto():
    gen, ref = mm.fingerprints(_mols(SMILES[:2])), mm.fingerprints(_mols(SMILES[2:]))
    from rdkit import DataStructs

    expected = np.mean([max(DataStructs.BulkTanimotoSimilarity(f, ref)) for f in gen])
    assert mm.snn(gen, ref) == pytest.approx(expected)
    assert 0 < mm.snn(gen, ref) < 1


def test_internal_diversity():
    same = mm.fingerprints(_mols(["c1ccccc1O"] * 5))
    assert mm.internal_diversity(same, 1) == pytest.approx(0.0)
    assert mm.internal_diversity(same, 2) == pytest.approx(0.0)
    fps = mm.fingerprints(_mols())
    t = np.array([[__import__("rdkit").DataStructs.TanimotoSimilarity(a, b) for b in fps] for a in fps])
    assert mm.internal_diversity(fps, 1) == pytest.approx(1 - t.mean())  # diagonal included, as MOSES
    assert mm.internal_diversity(fps, 2) == pytest.approx(1 - np.sqrt((t ** 2).mean()))


def test_fragment_and_scaffold_similarity_of_identical_sets_is_one():
    mols = _mols()
    frag = mm.fragment_counts(mols)
    scaf = mm.scaffold_counts(mols)
    assert mm.cos_similarity(frag, mm.fragment_counts(_mols())) == pytest.approx(1.0)
    assert mm.cos_similarity(scaf, scaf) == pytest.approx(1.0)
    assert frag["[16*]c1ccc([16*])cc1"] >= 1  # BRICS fragments keep their dummy-atom labels
    # scaffolds: at least two rings (MOSES default); benzene alone has none
    assert "c1ccc(-c2ccccc2)cc1" in scaf and "c1ccccc1" not in scaf
    assert mm.cos_similarity({"a": 1}, {"b": 1}) == 0.0
    assert mm.cos_similarity({}, {"b": 1}) != mm.cos_similarity({}, {"b": 1})  # NaN


def test_wasserstein():
    assert mm.wasserstein([0, 1, 2], [0, 1, 2]) == 0.0
    assert mm.wasserstein([0, 0], [1, 1]) == pytest.approx(1.0)
    assert mm.wasserstein([np.nan, 1.0], [2.0]) == pytest.approx(1.0)


@pytest.mark.skipif(not mm.FCD_AVAILABLE, reason="the PyPI 'fcd' package (ChemNet weights) is not installed")
def test_fcd_of_a_set_with_itself_is_zero_and_positive_otherwise():
    same = mm.fcd(SMILES, SMILES)
    assert abs(same) < 1e-3
    other = mm.fcd(SMILES, ["CCCCCCCC", "CCCCO", "CCCCCN", "CCOCC", "CCCCCCl", "CC(C)CC"])
    assert other > 1.0
    stats = mm.fcd_stats(SMILES)
    assert stats["mu"].shape == (512,) and stats["sigma"].shape == (512, 512)
    assert mm.frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-3)
