import numpy as np
import pandas as pd
import pytest
from eval_helpers import GOLDEN, METHANE, WATER, benzene

from moldiff.evaluation import CHECKS, SUMMARY_KEYS, evaluate_molecules
from moldiff.evaluation.report import format_summary, jsonable
from moldiff.io import read_molecules

BAD = [
    (["C", "H"], [[0, 0, 0]]),  # wrong atom count
    (["C", "H"], [[0, 0, 0], [1, "x", 0]]),  # non-numeric
    (["C", "H"], [[0, 0, 0], [np.nan, 0, 0]]),  # NaN
    (["C", "Xx"], [[0, 0, 0], [1, 0, 0]]),  # unknown element
]


def test_golden_file_through_io(golden):
    records = read_molecules(GOLDEN, strict=False)
    table, summary = evaluate_molecules(records)
    assert [n.split()[0] for n in table["name"]] == [g[0] for g in golden]
    for (_, _, _, exp), (_, row) in zip(golden, table.iterrows(), strict=True):
        assert str(row["mol_stable"]) == exp["mol_stable"]
        assert row["n_stable_atoms"] == int(exp["n_stable"])
        assert str(row["valid"]) == exp["valid"]
        assert pd.isna(row["reason"]) == (exp["mol_stable"] == "True")


def test_bad_records_are_scored_with_reason_and_rest_kept():
    good = [METHANE, WATER]
    table, summary = evaluate_molecules([good[0], *BAD, good[1]])
    assert len(table) == 6 and summary["num_malformed"] == 4
    assert table["mol_stable"].tolist() == [True, False, False, False, False, True]
    assert not table.loc[1:4, "valid"].any()
    assert table.loc[1, "reason"].startswith("wrong atom count")
    assert table.loc[2, "reason"] == "non-numeric coordinate"
    assert table.loc[3, "reason"].startswith("non-finite")
    assert table.loc[4, "reason"] == "unknown element Xx"
    assert summary["mol_stability"] == pytest.approx(2 / 6)
    assert summary["validity"] == pytest.approx(2 / 6)


def test_summary_pooling_and_keys():
    mols = [METHANE, METHANE, benzene(), (METHANE[0] + WATER[0], np.vstack([METHANE[1], WATER[1] + 9]))]
    table, s = evaluate_molecules(mols, reference_smiles={"[H]C([H])([H])[H]"})
    assert set(SUMMARY_KEYS) <= set(s)
    assert s["atom_stability"] == pytest.approx((5 + 5 + 6 + 8) / (5 + 5 + 12 + 8))  # pooled, not averaged
    assert s["mol_stability"] == pytest.approx(3 / 4)
    assert s["validity"] == 1.0 and s["validity_connected"] == 0.75 and s["connected"] == 0.75
    assert s["uniqueness"] == pytest.approx(2 / 4)  # methane ×3 (one as largest fragment), benzene-like
    assert s["valid_and_unique"] == pytest.approx(0.5)
    assert s["novelty"] == pytest.approx(1 / 2)
    assert np.isnan(evaluate_molecules(mols)[1]["novelty"])


def test_unknown_check_lists_allowed():
    with pytest.raises(ValueError, match="allowed: edm, rdkit_bonds"):
        evaluate_molecules([METHANE], checks=["nope"])
    with pytest.raises(ValueError, match="workers"):
        evaluate_molecules([METHANE], workers=0)


@pytest.mark.parametrize("check", list(CHECKS))
def test_every_registered_check_runs(check, golden):
    mols = [(s, p) for _, s, p, _ in golden] + BAD[:1]
    table, summary = evaluate_molecules(mols, checks=[check])
    assert len(table) == len(mols)
    assert table.columns[:10].tolist() == ["name", "n_atoms", "n_stable_atoms", "mol_stable", "valid",
                                            "connected", "valid_connected", "n_fragments", "smiles", "reason"]
    assert summary["num_molecules"] == len(mols)


def test_workers_and_chunks_preserve_order(golden):
    mols = [(s, p) for _, s, p, _ in golden] * 3
    t1, s1 = evaluate_molecules(mols)
    t2, s2 = evaluate_molecules(mols, workers=2, chunk_size=5)
    pd.testing.assert_frame_equal(t1, t2)
    assert jsonable(s1) == jsonable(s2)


def test_format_and_json():
    _, s = evaluate_molecules([METHANE])
    j = jsonable(s)
    assert j["novelty"] is None and j["num_molecules"] == 1
    assert "mol_stability" in format_summary(s)


def test_rdkit_mol_input_roundtrip():
    from moldiff.evaluation.build import add_conformer, build_edm_mol
    from moldiff.evaluation.stability import bond_order_matrix

    rd = add_conformer(build_edm_mol(METHANE[0], bond_order_matrix(*METHANE)), METHANE[1])
    table, _ = evaluate_molecules([rd])
    assert table.loc[0, "mol_stable"]
