import numpy as np
import pytest
from eval_helpers import METHANE, METHYL, WATER, benzene
from rdkit import Chem

from moldiff.evaluation.build import build_edm_mol
from moldiff.evaluation.stability import bond_order_matrix
from moldiff.evaluation.validity import (
    edm_validity,
    largest_fragment,
    novelty,
    perceive_bonds_rdkit,
    quiet_stderr,
    sanitize_smiles,
    uniqueness,
)


def _edm(symbols, pos):
    return edm_validity(build_edm_mol(symbols, bond_order_matrix(symbols, pos)))


def test_methane_valid_with_explicit_h_smiles():
    v = _edm(*METHANE)
    assert v == {"valid": True, "smiles": "[H]C([H])([H])[H]", "n_fragments": 1, "connected": True,
                 "reason": None}


def test_under_bonded_is_valid_as_in_edm():
    assert _edm(*METHYL)["valid"]  # RDKit completes C with an implicit H


def test_over_bonded_is_invalid_with_reason():
    v = _edm(*benzene(cc=1.36))  # every C–C double -> C valence 5
    assert not v["valid"] and v["smiles"] is None
    assert v["reason"].startswith("sanitization failed: Explicit valence")


def test_disconnected_valid_under_edm_but_not_strict():
    symbols = METHANE[0] + WATER[0]
    pos = np.vstack([METHANE[1], WATER[1] + 10.0])
    v = _edm(symbols, pos)
    assert v["valid"] and not v["connected"] and v["n_fragments"] == 2
    assert v["smiles"] == "[H]C([H])([H])[H]"  # largest fragment (5 atoms vs 3)


def test_largest_fragment_first_wins_ties():
    frag, n = largest_fragment(Chem.AddHs(Chem.MolFromSmiles("O.N")))
    assert n == 2 and frag.GetNumAtoms() == 4  # NH3 (4 atoms with explicit H) beats H2O (3)
    frag, n = largest_fragment(Chem.MolFromSmiles("N.O"))
    assert frag.GetAtomWithIdx(0).GetSymbol() == "N"  # 1 heavy atom each: the first one wins
    mol = Chem.MolFromSmiles("CO.OC")
    frag, n = largest_fragment(mol)
    assert n == 2 and Chem.MolToSmiles(frag) == "CO"


def test_sanitize_smiles_failure():
    mol = Chem.RWMol()
    for _ in range(2):
        mol.AddAtom(Chem.Atom("F"))
    mol.AddBond(0, 1, Chem.BondType.DOUBLE)
    smiles, reason = sanitize_smiles(mol)
    assert smiles is None and "valence" in reason


def test_uniqueness_over_explicit_h_smiles():
    smiles = ["[H]C([H])([H])[H]", "[H]C([H])([H])[H]", "C", "[H]O[H]"]
    assert uniqueness(smiles) == pytest.approx(3 / 4)  # "C" and "[H]C([H])([H])[H]" differ as strings
    assert np.isnan(uniqueness([]))


def test_novelty_counts_distinct_valid():
    assert novelty(["a", "a", "b", "c"], {"a"}) == pytest.approx(2 / 3)
    assert novelty(["a"], ["a"]) == 0.0
    assert np.isnan(novelty([], {"a"}))


def test_rdkit_perception_second_opinion_on_benzene():
    with quiet_stderr():
        mol, reason = perceive_bonds_rdkit(*benzene())
    assert reason is None
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == "c1ccccc1"
    assert not _edm(*benzene())["smiles"].count("=")  # EDM's tables read it as cyclohexane-like


def test_rdkit_perception_failure_has_reason():
    mol, reason = perceive_bonds_rdkit(["C", "C"], np.array([[0, 0, 0], [0.3, 0, 0]]), use_hueckel=False)
    assert mol is None and reason.startswith("rdDetermineBonds failed")
