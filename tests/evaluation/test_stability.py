import itertools

import numpy as np
import pytest
from eval_helpers import AMMONIUM, METHANE, METHYL, WATER, benzene, random_rotation
from hypothesis import given, settings
from hypothesis import strategies as st

from moldiff.constants import BONDS1, BONDS2, BONDS3
from moldiff.evaluation.stability import (
    ELEMENTS,
    batch_stability,
    bond_order,
    bond_order_matrix,
    check_stability,
    element_indices,
)


@pytest.mark.parametrize(
    ("a", "b", "d", "order"),
    [
        ("C", "O", 1.12, 3),  # C≡O: the 113 pm entry must exist
        ("C", "O", 1.159, 3),
        ("C", "O", 1.16, 2),  # strict <: 113 + 3 = 116 pm exactly is not triple
        ("O", "C", 1.16, 2),
        ("C", "O", 1.249, 2),
        ("C", "O", 1.25, 1),  # 120 + 5 = 125 pm exactly is not double
        ("C", "O", 1.529, 1),
        ("C", "O", 1.53, 0),  # 143 + 10 = 153 pm
        ("H", "H", 0.74, 1),  # H–H entry (74 pm)
        ("H", "H", 0.839, 1),
        ("H", "H", 0.84, 0),
        ("C", "C", 1.39, 1),  # aromatic C–C at the double cut-off reads as single
        ("C", "C", 1.389, 2),
        ("C", "C", 1.20, 3),
        ("C", "C", 1.64, 0),
        ("N", "N", 1.10, 3),
        ("O", "O", 1.21, 2),
        ("N", "O", 1.21, 2),
        ("C", "F", 1.35, 1),
        ("F", "F", 1.0, 1),  # no double/triple F entries
        ("C", "H", 1.09, 1),
        ("C", "H", 5.0, 0),
    ],
)
def test_bond_order_table_cases(a, b, d, order):
    assert bond_order(a, b, d) == order


def test_bond_order_unknown_element():
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        bond_order("C", "Xx", 1.0)


def test_missing_pair_is_not_bonded():
    assert "C" not in BONDS1["B"]
    assert bond_order("B", "C", 1.0) == 0


def test_tables_symmetric_except_documented_c_s():
    for table in (BONDS1, BONDS2, BONDS3):
        for a, row in table.items():
            for b, v in row.items():
                if (a, b) == ("C", "S") and table is BONDS2:
                    continue
                assert table[b][a] == v, (a, b)
    assert bond_order("C", "S", 1.60) == bond_order("S", "C", 1.60) == 2


def test_matrix_matches_scalar_loop():
    rng = np.random.default_rng(0)
    symbols = list(rng.choice(["H", "C", "N", "O", "F"], size=12))
    pos = rng.uniform(0, 3, size=(12, 3))
    mat = bond_order_matrix(symbols, pos)
    assert mat.shape == (12, 12) and mat.dtype == np.int8
    for i, j in itertools.combinations(range(12), 2):
        assert mat[i, j] == mat[j, i] == bond_order(symbols[i], symbols[j], np.linalg.norm(pos[i] - pos[j]))
    assert (np.diag(mat) == 0).all()


def test_bond_order_matrix_shape_error():
    with pytest.raises(ValueError, match="shape"):
        bond_order_matrix(["C", "H"], np.zeros((3, 3)))


@pytest.mark.parametrize(
    ("mol", "expected"),
    [
        (METHANE, (True, 5, 5)),
        (WATER, (True, 3, 3)),
        (AMMONIUM, (False, 4, 5)),  # N with 4 bonds is unstable (no charged forms)
        (METHYL, (False, 3, 4)),  # under-bonded C (valence 3) is unstable
        (benzene(), (False, 6, 12)),  # aromatic C–C 1.395 Å -> single -> C valence 3
        (benzene(cc=1.36), (False, 6, 12)),  # all double -> C valence 5
    ],
)
def test_check_stability(mol, expected):
    assert check_stability(*mol) == expected


def test_golden_qm9(golden):
    assert {e["mol_stable"] for *_, e in golden} == {"True", "False"}
    for name, symbols, pos, exp in golden:
        stable, n_stable, n = check_stability(symbols, pos)
        assert str(stable) == exp["mol_stable"], name
        assert n_stable == int(exp["n_stable"]), name


def test_batch_matches_single_and_ignores_padding():
    mols = [METHANE, WATER, AMMONIUM, benzene()]
    n = max(len(s) for s, _ in mols)
    types = -np.ones((len(mols), n), dtype=np.int64)
    pos = np.full((len(mols), n, 3), 0.1)  # padding sits on top of real atoms: must be ignored
    for k, (s, p) in enumerate(mols):
        types[k, : len(s)] = element_indices(s)
        pos[k, : len(s)] = p
    stable, valence = batch_stability(types, pos)
    for k, (s, p) in enumerate(mols):
        ok, n_stable, _ = check_stability(s, p)
        assert stable[k, : len(s)].sum() == n_stable
        assert not stable[k, len(s):].any()
        assert (valence[k, len(s):] == 0).all()


_mol = st.integers(2, 10).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from(["H", "C", "N", "O", "F"]), min_size=n, max_size=n),
        st.lists(st.tuples(*[st.floats(-2.5, 2.5)] * 3), min_size=n, max_size=n),
        st.integers(0, 2**32 - 1),
    )
)


def _away_from_cutoffs(symbols, pos, tol=1e-3):
    """True when no pair distance lies within ``tol`` pm·0.01 of a cut-off (float32 rounding)."""
    from moldiff.evaluation.stability import _CUTOFFS

    t = element_indices(symbols)
    d = 100 * np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    cut = _CUTOFFS[:, t[:, None], t[None, :]]
    return not (np.abs(d[None] - cut) < tol).any()


@settings(max_examples=60, deadline=None)
@given(_mol)
def test_bond_orders_invariant_under_rigid_motion_and_permutation(data):
    symbols, coords, seed = data
    pos = np.array(coords, dtype=np.float64)
    if not _away_from_cutoffs(symbols, pos):
        return  # a 1e-5 Å move could legitimately flip the order of a pair sitting on a cut-off
    rng = np.random.default_rng(seed)
    rot, shift, perm = random_rotation(rng), rng.uniform(-10, 10, 3), rng.permutation(len(symbols))
    ref = bond_order_matrix(symbols, pos)
    moved = bond_order_matrix(symbols, pos @ rot.T + shift)
    np.testing.assert_array_equal(ref, moved)
    permuted = bond_order_matrix([symbols[i] for i in perm], pos[perm])
    np.testing.assert_array_equal(ref[np.ix_(perm, perm)], permuted)
    s0 = check_stability(symbols, pos)
    s1 = check_stability([symbols[i] for i in perm], pos[perm] @ rot.T + shift)
    assert s0 == s1


def test_elements_cover_allowed_bonds():
    from moldiff.constants import ALLOWED_BONDS

    assert set(ALLOWED_BONDS) <= set(ELEMENTS)
