"""Stability and validity by a molecule's own bonds (check_stability_bonds, the *_own_bonds columns/keys)."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from moldiff.evaluation import evaluate_molecules
from moldiff.evaluation.report import OWN_BOND_KEYS, format_summary
from moldiff.evaluation.stability import bond_order_matrix, check_stability, check_stability_bonds
from moldiff.io import bonded_mol, read_molecules, write_sdf

OWN_HEADER = "by the file's own bonds (the model's bonds for a bond-channel model; not EDM's metric):"


def _benzene(aromatic):
    symbols = ["C"] * 6 + ["H"] * 6
    bonds = [(k, (k + 1) % 6, aromatic) for k in range(6)] + [(k, k + 6, 1) for k in range(6)]
    return symbols, bonds


def test_hand_made_molecules():
    methane = (["C", "H", "H", "H", "H"], [(0, k, 1) for k in range(1, 5)])
    assert check_stability_bonds(*methane) == (True, 5, 5)
    ethene = (["C", "C", "H", "H", "H", "H"], [(0, 1, 2), (0, 2, 1), (0, 3, 1), (1, 4, 1), (1, 5, 1)])
    assert check_stability_bonds(*ethene) == (True, 6, 6)
    assert check_stability_bonds(ethene[0], [(i, j, float(o)) for i, j, o in ethene[1]]) == (True, 6, 6)
    ch5 = (["C"] + ["H"] * 5, [(0, k, 1) for k in range(1, 6)])
    assert check_stability_bonds(*ch5) == (False, 5, 6)
    assert check_stability_bonds(*_benzene(4)) == (True, 12, 12)
    assert check_stability_bonds(*_benzene(1.5)) == (True, 12, 12)
    # numpy scalars as read from arrays
    assert check_stability_bonds(methane[0], [(np.int64(i), np.int64(j), np.float32(o))
                                              for i, j, o in methane[1]]) == (True, 5, 5)


def test_aromatic_valence_is_truncated_like_midi():
    # naphthalene: the two ring-fusion carbons have three aromatic bonds (4.5) -> 4, stable
    rd = Chem.AddHs(Chem.MolFromSmiles("c1ccc2ccccc2c1"))
    symbols = [a.GetSymbol() for a in rd.GetAtoms()]
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondTypeAsDouble()) for b in rd.GetBonds()]
    assert sorted({o for *_, o in bonds}) == [1.0, 1.5]
    assert check_stability_bonds(symbols, bonds) == (True, 18, 18)
    # a carbon with one aromatic and two single bonds (3.5) -> 3: unstable
    assert check_stability_bonds(["C", "C", "H", "H"], [(0, 1, 4), (0, 2, 1), (0, 3, 1)])[:2] == (False, 2)


def test_charges_ignored_errors_and_empty():
    ammonium = (["N", "H", "H", "H", "H"], [(0, k, 1) for k in range(1, 5)])
    assert check_stability_bonds(*ammonium, formal_charges=[1, 0, 0, 0, 0]) == (False, 4, 5)  # as EDM
    assert check_stability_bonds(["C", "H"], []) == (False, 0, 2)
    assert check_stability_bonds(["H", "H"], [(0, 1, 0), (0, 1, 1)]) == (True, 2, 2)  # order 0 adds nothing
    for bad in ([(0, 2, 1)], [(0, 0, 1)], [(0, 1, 5)], [(0, 1, 2.5)], [(0, 1, "x")]):
        with pytest.raises(ValueError):
            check_stability_bonds(["H", "H"], bad)
    with pytest.raises(ValueError, match="unknown element"):
        check_stability_bonds(["H", "Xx"], [(0, 1, 1)])
    with pytest.raises(ValueError, match="unknown element"):  # same behaviour as check_stability
        check_stability(["H", "Xx"], np.zeros((2, 3)))


def _embedded(smiles, seed=0):
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert AllChem.EmbedMolecule(m, params) == 0
    return m


def _kekule_bonds(m):
    m = Chem.Mol(m)
    Chem.Kekulize(m, clearAromaticFlags=True)
    return [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondTypeAsDouble())) for b in m.GetBonds()]


@pytest.mark.parametrize("smiles", ["CCO", "C", "CC#N", "CC=O", "C=CC", "CN"])
def test_agrees_with_distance_rule_when_bonds_agree(smiles):
    m = _embedded(smiles)
    symbols = [a.GetSymbol() for a in m.GetAtoms()]
    pos = m.GetConformer().GetPositions()
    bonds = _kekule_bonds(m)
    given = np.zeros((len(symbols), len(symbols)), dtype=np.int8)
    for i, j, o in bonds:
        given[i, j] = given[j, i] = o
    np.testing.assert_array_equal(bond_order_matrix(symbols, pos), given)  # the premise
    assert check_stability_bonds(symbols, bonds) == check_stability(symbols, pos)
    assert check_stability(symbols, pos)[0]


def _three_molecules():
    """Methane, ethanol (both fine) and methanol given a C=O double bond (pentavalent C, trivalent O)."""
    out = []
    for k, smiles in enumerate(["C", "CCO", "CO"]):
        m = _embedded(smiles)
        symbols = [a.GetSymbol() for a in m.GetAtoms()]
        bonds = _kekule_bonds(m)
        if smiles == "CO":
            bonds = [(i, j, 2 if {symbols[i], symbols[j]} == {"C", "O"} else o) for i, j, o in bonds]
        out.append(bonded_mol(symbols, m.GetConformer().GetPositions(), bonds, name=f"m{k}"))
    return out


def test_evaluate_molecules_round_trip(tmp_path):
    path = tmp_path / "three.sdf"
    write_sdf(path, _three_molecules())
    records = read_molecules(path)
    assert all(r.bonds is not None for r in records)
    table, s = evaluate_molecules(records)
    assert table["n_stable_atoms_own_bonds"].tolist() == [5, 9, 4]
    assert table["mol_stable_own_bonds"].tolist() == [True, True, False]
    assert table["valid_own_bonds"].tolist() == [True, True, False]
    assert table.loc[2, "reason_own_bonds"].startswith("sanitization failed")
    assert s["atom_stability_own_bonds"] == pytest.approx(18 / 20)
    assert s["mol_stability_own_bonds"] == pytest.approx(2 / 3)
    assert s["validity_own_bonds"] == pytest.approx(2 / 3)
    # the distance rule sees methanol's geometry, not its bonds: EDM's numbers are unchanged ...
    plain_table, plain = evaluate_molecules([(r.symbols, r.pos) for r in records])
    assert plain["mol_stability"] == s["mol_stability"] == 1.0
    for k, v in plain.items():
        assert s[k] == v or (v != v and s[k] != s[k]), k  # equal, or both NaN
    # ... and (symbols, pos) input has no own-bond keys, columns or lines
    assert not set(OWN_BOND_KEYS) & set(plain)
    assert not any(c.endswith("_own_bonds") for c in plain_table.columns)
    assert OWN_HEADER not in format_summary(plain)
    plain_cols = list(plain_table.columns)
    assert list(table.columns)[:len(plain_cols)] == plain_cols

    text = format_summary(s).splitlines()
    assert format_summary(s).startswith(format_summary(plain))  # every existing line unchanged, in order
    at = text.index(OWN_HEADER)
    assert text[at + 1:at + 4] == ["atom stability, own bonds             90.00 %",
                                   "molecule stability, own bonds         66.67 %",
                                   "validity, own bonds (RDKit)           66.67 %"]
    assert at == len(text) - 4  # the last block, after all of EDM's lines


def test_mixed_input_scores_own_bonds_over_bonded_molecules_only(tmp_path):
    path = tmp_path / "three.sdf"
    write_sdf(path, _three_molecules())
    records = read_molecules(path)
    table, s = evaluate_molecules([records[2], (records[0].symbols, records[0].pos), records[1]])
    assert table["mol_stable_own_bonds"].isna().tolist() == [False, True, False]
    assert s["mol_stability_own_bonds"] == pytest.approx(0.5)
    assert s["atom_stability_own_bonds"] == pytest.approx(13 / 15)
    assert s["validity_own_bonds"] == pytest.approx(0.5)
    assert s["num_molecules"] == 3


def test_rdkit_perception_refuses_overlapping_atoms_instead_of_crashing():
    """YAeHMOP's Hückel step segfaults on near-coincident atoms (a sampled drug-like molecule did)."""
    from moldiff.evaluation.validity import perceive_bonds_rdkit

    pos = np.array([[0.0, 0.0, 0.0], [1.09, 0.0, 0.0], [1.0907, 0.0, 0.0], [-0.4, 1.0, 0.0]])
    mol, why = perceive_bonds_rdkit(["C", "H", "H", "H"], pos)
    assert mol is None and "overlap" in why and "atoms 2 and 3" in why
