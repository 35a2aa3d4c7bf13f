"""QM9's derived bonds (moldiff.data.qm9_bonds), has_bonds_mask, and the bond model's training rows."""

import numpy as np
import pytest

from moldiff.data.arrays import MoleculeArrays
from moldiff.data.qm9_bonds import derive_bonds, derive_dataset_bonds, template_bonds, xyz2mol_bonds
from moldiff.io import bonded_mol

Chem = pytest.importorskip("rdkit.Chem")
AllChem = pytest.importorskip("rdkit.Chem.AllChem")


def _geometry(smiles: str, seed: int = 0, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(atomic_numbers, pos, perm)`` of an MMFF-optimised conformer, atoms shuffled (QM9 order is not SMILES order).

    ``perm[k]`` is the RDKit index of atom ``k``.
    """
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    pos = mol.GetConformer().GetPositions()
    perm = np.random.RandomState(seed).permutation(len(z)) if shuffle else np.arange(len(z))
    return z[perm], pos[perm], perm


def _smiles_of(z, pos, bonds, charges) -> str:
    symbols = [Chem.GetPeriodicTable().GetElementSymbol(int(x)) for x in z]
    mol = bonded_mol(symbols, pos, bonds, charges)
    Chem.SanitizeMol(mol)
    return Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)


def _canon(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)


@pytest.mark.parametrize("smiles", ["CCO", "CC#N", "c1ccccc1", "[NH3+]CC(=O)[O-]", "OC12CC(C1)C2", "O=C1CCC1"])
def test_template_reproduces_the_molecule(smiles):
    z, pos, _ = _geometry(smiles)
    d = derive_bonds(z, pos, smiles)
    assert d.method == "template" and d.reason == ""
    assert all(i < j for i, j, _ in d.bonds) and d.bonds == sorted(d.bonds)
    assert {c for _, _, c in d.bonds} <= {1, 2, 3}  # kekulised
    assert _smiles_of(z, pos, d.bonds, d.formal_charges) == _canon(smiles)


def test_ethanol_acetonitrile_benzene_bonds():
    z, pos, _ = _geometry("CCO")
    d = derive_bonds(z, pos, "CCO")
    assert len(d.bonds) == 8 and {c for *_, c in d.bonds} == {1} and d.formal_charges == [0] * 9
    oh = [(i, j) for i, j, _ in d.bonds if {z[i], z[j]} == {1, 8}]
    assert len(oh) == 1  # the hydroxyl H sits on O
    z, pos, _ = _geometry("CC#N")
    d = derive_bonds(z, pos, "CC#N")
    triple = [(i, j) for i, j, c in d.bonds if c == 3]
    assert len(triple) == 1 and sorted(z[list(triple[0])].tolist()) == [6, 7]
    z, pos, _ = _geometry("c1ccccc1")
    d = derive_bonds(z, pos, "c1ccccc1")
    ring = [c for i, j, c in d.bonds if z[i] == z[j] == 6]
    assert sorted(ring) == [1, 1, 1, 2, 2, 2]  # Kekulé benzene
    degree = np.bincount([k for i, j, c in d.bonds if c == 2 for k in (i, j)], minlength=len(z))
    assert sorted(degree[z == 6].tolist()) == [1] * 6  # alternating: every carbon in one double bond


def test_zwitterion_keeps_formal_charges():
    z, pos, perm = _geometry("[NH3+]CC(=O)[O-]")
    d = derive_bonds(z, pos, "[NH3+]CC(=O)[O-]")
    charges = np.asarray(d.formal_charges)
    assert sorted(charges.tolist()) == [-1] + [0] * 8 + [1]
    assert z[charges == 1].tolist() == [7] and z[charges == -1].tolist() == [8]


def test_strained_ring_where_distance_connectivity_adds_bonds():
    """Bicyclo[1.1.1]pentane: the bridgeheads are ~1.9 A apart, inside DetermineConnectivity's cut-off."""
    from rdkit.Chem import rdDetermineBonds

    smiles = "C1C2CC1C2"
    z, pos, _ = _geometry(smiles, shuffle=False)
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    conn = Chem.Mol(mol)
    conn.RemoveAllConformers()
    conf = Chem.Conformer(len(z))
    for k, p in enumerate(pos.tolist()):
        conf.SetAtomPosition(k, p)
    conn = Chem.RWMol(conn)
    conn.AddConformer(conf)
    rdDetermineBonds.DetermineConnectivity(conn)
    assert conn.GetNumBonds() > mol.GetNumBonds()  # the 1,3 contact counted as a bond
    d = derive_bonds(z, pos, smiles)
    assert d.method == "template" and len(d.bonds) == mol.GetNumBonds()


def test_wrong_template_falls_back_to_xyz2mol():
    z, pos, _ = _geometry("CC=O")  # acetaldehyde, with the SMILES of its tautomer vinyl alcohol
    with pytest.raises(ValueError, match="hydrogens sit on other atoms"):
        template_bonds(z, pos, "C=CO")
    d = derive_bonds(z, pos, "C=CO")
    assert d.method == "xyz2mol" and "hydrogens" in d.reason
    assert _smiles_of(z, pos, d.bonds, d.formal_charges) == "CC=O"
    z, pos, _ = _geometry("CCO")
    d = derive_bonds(z, pos, "COC")  # dimethyl ether's graph is not ethanol's
    assert d.method == "xyz2mol" and "do not fit" in d.reason
    assert _smiles_of(z, pos, d.bonds, d.formal_charges) == "CCO"
    for bad, why in [("CC", "heavy atoms"), ("not a smiles", "parse")]:
        d = derive_bonds(z, pos, bad)
        assert d.method == "xyz2mol" and why in d.reason
    assert derive_bonds(z, pos, None).method == "xyz2mol"  # no SMILES: xyz2mol only
    assert derive_bonds(z, pos, None).bonds == xyz2mol_bonds(z, pos)[0]


def test_template_whose_bond_is_broken_in_the_geometry():
    """A ring bond stretched to 2.6 A (as in QM9 molecules that opened during relaxation): xyz2mol."""
    z, pos, _ = _geometry("C1CC1", shuffle=False)
    mol = Chem.AddHs(Chem.MolFromSmiles("C1CC1"))
    group = [1] + [a.GetIdx() for a in mol.GetAtomWithIdx(1).GetNeighbors() if a.GetAtomicNum() == 1]
    shift = (pos[1] - pos[0]) / np.linalg.norm(pos[1] - pos[0]) * (2.6 - np.linalg.norm(pos[1] - pos[0]))
    pos = pos.copy()
    pos[group] += shift  # C1 and its hydrogens move away from C0
    with pytest.raises(ValueError, match="do not fit"):
        template_bonds(z, pos, "C1CC1")


def _pentavalent_carbon():
    """CH5 with C-H 1.09 A: no template fits and xyz2mol finds no valence."""
    dirs = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [0, 0, 1.6]], dtype=float)
    pos = np.vstack([[0, 0, 0], 1.09 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)])
    return np.array([6, 1, 1, 1, 1, 1]), pos


def test_both_fail_gives_no_bonds():
    z, pos = _pentavalent_carbon()
    d = derive_bonds(z, pos, "C")
    assert d.method == "failed" and d.bonds is None and d.formal_charges is None
    assert "hydrogen" in d.reason and "xyz2mol" in d.reason


def _toy_set(with_failure: bool) -> MoleculeArrays:
    mols, smiles = [], []
    for smi in ("CCO", "CC#N", "c1ccccc1"):
        z, pos, _ = _geometry(smi)
        symbols = [Chem.GetPeriodicTable().GetElementSymbol(int(x)) for x in z]
        mols.append((symbols, pos))
        smiles.append(smi)
    if with_failure:
        z, pos = _pentavalent_carbon()
        mols.insert(1, (["C", "H", "H", "H", "H", "H"], pos))
        smiles.insert(1, "C")
    return MoleculeArrays.from_molecules(mols, smiles=smiles, elements=("H", "C", "N", "O", "F"))


def test_derive_dataset_bonds_and_mask_round_trip(tmp_path):
    arrays, report = derive_dataset_bonds(_toy_set(with_failure=True), progress=False)
    assert report.counts == {"template": 3, "xyz2mol": 0, "failed": 1}
    assert [(row, method) for row, method, _ in report.others] == [(1, "failed")]
    assert arrays.has_bonds_mask.tolist() == [True, False, True, True]
    assert arrays.n_bonds.tolist() == [8, 0, 5, 12] and arrays.formal_charge.dtype == np.int8
    arrays.save(tmp_path / "a.npz")
    back = MoleculeArrays.load(tmp_path / "a.npz")
    assert back.has_bonds_mask.dtype == np.bool_ and back.bonds_known.tolist() == [True, False, True, True]
    assert back.bonds(3) == arrays.bonds(3)
    sub = back.subset([3, 1])
    assert sub.bonds_known.tolist() == [True, False] and sub.n_bonds.tolist() == [12, 0]
    heavy = back.remove_hydrogens()
    assert heavy.bonds_known.tolist() == [True, False, True, True] and heavy.n_bonds.tolist() == [2, 0, 2, 6]
    joined = MoleculeArrays.concatenate([back, derive_dataset_bonds(_toy_set(False), progress=False)[0]])
    assert joined.bonds_known.tolist() == [True, False, True, True, True, True, True]
    # no failure: no mask at all; bonds everywhere
    clean, report = derive_dataset_bonds(_toy_set(with_failure=False), progress=False)
    assert clean.has_bonds_mask is None and clean.bonds_known.all() and report.counts["failed"] == 0


def test_old_files_and_mask_validation(tmp_path):
    plain = _toy_set(with_failure=False)  # no bonds: a layout-1 file, as the QM9 cache before bonds
    plain.save(tmp_path / "old.npz")
    old = MoleculeArrays.load(tmp_path / "old.npz")
    assert not old.has_bonds and old.has_bonds_mask is None and not old.bonds_known.any()
    with pytest.raises(ValueError, match="needs bonds"):
        MoleculeArrays(**{**vars(plain), "has_bonds_mask": np.ones(3, bool)})
    bonded = MoleculeArrays.from_molecules([(["C", "O"], np.eye(2, 3)), (["C"], np.zeros((1, 3)))],
                                           bonds=[[(0, 1, 2)], None])
    assert bonded.has_bonds_mask.tolist() == [True, False]
    with pytest.raises(ValueError, match="store no bonds"):
        MoleculeArrays(**{**vars(bonded), "has_bonds_mask": np.array([False, True])})
    with pytest.raises(ValueError, match="bool array"):
        MoleculeArrays(**{**vars(bonded), "has_bonds_mask": np.array([1, 0])})


def test_bond_model_drops_rows_without_bonds(capsys):
    from moldiff.training.run import rows_with_bonds

    arrays = MoleculeArrays.from_molecules(
        [(["C", "O"], np.eye(2, 3)), (["C"], np.zeros((1, 3))), (["N", "N"], np.eye(2, 3))],
        bonds=[[(0, 1, 2)], None, [(0, 1, 3)]],
    )
    assert rows_with_bonds(arrays, np.array([2, 1, 0, 1])).tolist() == [2, 0]
    assert "dropped 2 of 4 training molecules" in capsys.readouterr().err
    assert rows_with_bonds(arrays, np.array([0, 2]), "validation").tolist() == [0, 2]
    assert capsys.readouterr().err == ""  # nothing dropped, nothing printed
    with pytest.raises(ValueError, match="moldiff data prepare"):
        rows_with_bonds(MoleculeArrays.from_molecules([(["C"], np.zeros((1, 3)))]), np.array([0]))


def test_run_training_filters_rows_for_a_bond_model(monkeypatch, tmp_path):
    """The wiring: run_training hands the bond model's loaders only rows with known bonds (no training)."""
    import moldiff.training.run as run
    from moldiff.config import ExperimentConfig

    arrays = MoleculeArrays.from_molecules(
        [(["C", "O"], np.eye(2, 3) * 1.2)] * 6, bonds=[[(0, 1, 2)], None, [(0, 1, 2)], None, [(0, 1, 2)], [(0, 1, 2)]],
    )
    seen = []

    class Stop(Exception):
        pass

    def loader(arr, rows, **kw):
        seen.append(np.asarray(rows).tolist())
        if len(seen) == 2:
            raise Stop
        return object()

    monkeypatch.setattr(run, "load_dataset", lambda name: arrays)
    monkeypatch.setattr(run, "get_split", lambda split, name: np.array([0, 1, 2, 3]) if split != "valid"
                        else np.array([4, 5, 1]))
    monkeypatch.setattr(run, "MolLoader", loader)
    cfg = ExperimentConfig().override(
        diffusion={"atom_types": "categorical", "bonds": "categorical", "include_charges": False},
        train={"device": "cpu"},
    )
    with pytest.raises(Stop):
        run.run_training(cfg, tmp_path / "run", progress=False)
    assert seen == [[0, 2], [4, 5]]
