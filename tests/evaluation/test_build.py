import numpy as np
import pytest
from eval_helpers import METHANE
from rdkit import Chem

from moldiff.evaluation.build import Molecule, add_conformer, build_edm_mol, to_molecule, to_molecules
from moldiff.evaluation.stability import bond_order_matrix
from moldiff.io import MoleculeRecord


def test_accepted_input_forms_agree():
    symbols, pos = METHANE
    rd = add_conformer(build_edm_mol(symbols, bond_order_matrix(symbols, pos)), pos)
    forms = [(symbols, pos), (tuple(symbols), pos.tolist()), MoleculeRecord("m", list(symbols), pos), rd]
    mols = to_molecules(forms)
    for m in mols:
        assert isinstance(m, Molecule) and m.error is None
        assert m.symbols == tuple(symbols)
        np.testing.assert_allclose(m.pos, pos)
    assert [m.name for m in mols][:3] == ["0", "1", "m"]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ((["C", "H"], [[0, 0, 0]]), "wrong atom count: 2 symbols, 1 positions"),
        ((["C", "H"], [[0, 0, 0], [1, "x", 0]]), "non-numeric coordinate"),
        ((["C", "H"], [[0, 0, 0], [1, np.nan, 0]]), "non-finite coordinate"),
        ((["C", "H"], [[0, 0, 0], [1, np.inf, 0]]), "non-finite coordinate"),
        ((["C", "Qq"], [[0, 0, 0], [1, 0, 0]]), "unknown element Qq"),
        ((["C"], [0, 0, 0]), "coordinates must have shape"),
        (([], np.zeros((0, 3))), "empty molecule"),
        (Chem.MolFromSmiles("CC"), "no conformer"),
        (42, "unsupported input type int"),
        (MoleculeRecord("bad", [], np.zeros((0, 3)), error="line 3: bad count"), "line 3: bad count"),
    ],
)
def test_malformed_inputs_get_a_reason(obj, reason):
    mol = to_molecule(obj)
    assert mol.error is not None and mol.error.startswith(reason)


def test_build_edm_mol_is_edm_like():
    symbols, pos = METHANE
    mol = build_edm_mol(symbols, bond_order_matrix(symbols, pos))
    assert mol.GetNumAtoms() == 5 and mol.GetNumBonds() == 4
    assert mol.GetNumConformers() == 0  # no stereo information, as in EDM
    assert all(a.GetFormalCharge() == 0 for a in mol.GetAtoms())
    orders = np.zeros((2, 2), dtype=np.int8)
    orders[0, 1] = orders[1, 0] = 3
    assert build_edm_mol(["C", "O"], orders).GetBondWithIdx(0).GetBondType() == Chem.BondType.TRIPLE


def test_one_molecule_record_for_files_and_evaluation(tmp_path):
    """``evaluation.Molecule`` and ``io.MoleculeRecord`` are ``io.Molecule``; normalising keeps bonds and charges."""
    from moldiff import Molecule as Public
    from moldiff.io import Molecule as IoMolecule
    from moldiff.io import bonded_mol, read_molecules, write_sdf

    assert Molecule is IoMolecule is MoleculeRecord is Public
    symbols, pos = METHANE
    write_sdf(tmp_path / "m.sdf", [bonded_mol(symbols, pos, [(0, k, 1) for k in range(1, 5)], [0] * 5, "methane")])
    (rec,) = read_molecules(tmp_path / "m.sdf")
    norm = to_molecule(rec, 7)
    assert norm.name == "methane" and norm.error is None and norm.symbols == tuple(symbols) and norm.n_atoms == 5
    assert norm.bonds == rec.bonds and len(norm.bonds) == 4 and norm.formal_charges == [0] * 5
    again = to_molecule(norm, 0)  # idempotent
    assert (again.name, again.symbols, again.error, again.bonds) == (norm.name, norm.symbols, None, norm.bonds)
    np.testing.assert_array_equal(again.pos, norm.pos)
    unnamed = to_molecule(Molecule("", ["C", "Qq"], np.zeros((2, 3))), 3)
    assert unnamed.name == "3" and unnamed.error == "unknown element Qq"  # records are validated, not trusted
