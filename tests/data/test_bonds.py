"""Bonds and formal charges through the data layer: SDF -> dataset -> batch -> SDF."""

from pathlib import Path

import numpy as np
import pytest
import torch

from moldiff.data import MoleculeArrays, MolLoader, import_dataset, load_dataset, load_stats
from moldiff.data.loader import batch_molecules
from moldiff.io import bonded_mol, read_molecules, write_sdf

Chem = pytest.importorskip("rdkit.Chem")
AllChem = pytest.importorskip("rdkit.Chem.AllChem")

SMILES = ["C[N+](C)(C)CC(=O)[O-]", "Oc1ccccc1", "CC#N", "[NH3+]CC(=O)[O-]", "c1ccncc1"]


def _canon(mol):
    return Chem.MolToSmiles(Chem.RemoveHs(mol))


def _write_fixture(path: Path, kekulize: bool = True) -> list[str]:
    """An SDF of SMILES with 3D coordinates (ETKDG, fixed seed); aromatic bonds as type 4 if not kekulize."""
    blocks = []
    for k, smi in enumerate(SMILES):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        assert AllChem.EmbedMolecule(mol, randomSeed=k) == 0
        mol.SetProp("_Name", f"m{k}")
        blocks.append(Chem.MolToMolBlock(mol, kekulize=kekulize) + "$$$$\n")
    path.write_text("".join(blocks))
    return [_canon(Chem.MolFromSmiles(s)) for s in SMILES]


@pytest.mark.parametrize("kekulize", [True, False])
def test_sdf_dataset_batch_sdf_round_trip(tmp_path, kekulize):
    expected = _write_fixture(tmp_path / "in.sdf", kekulize=kekulize)
    import_dataset(tmp_path / "in.sdf", "chem", root=tmp_path)
    arrays = load_dataset("chem", root=tmp_path)
    assert arrays.has_bonds and arrays.formal_charge is not None
    assert sorted(arrays.formal_charge.tolist()).count(1) == 2 and arrays.formal_charge.tolist().count(-1) == 2
    assert (4 in arrays.bond_type.tolist()) == (not kekulize)
    stats = load_stats("chem", root=tmp_path)
    assert "bond_type_counts" in stats["splits"]["train"]
    loader = MolLoader(arrays, batch_size=len(SMILES), shuffle=False)
    batch = next(iter(loader))
    assert batch.bond_index.shape == (2, len(arrays.bond_type)) and batch.bond_index.dtype == torch.long
    assert batch.bond_type.dtype == torch.long and batch.formal_charge.shape == (batch.pos.shape[0],)
    assert torch.all(batch.batch[batch.bond_index[0]] == batch.batch[batch.bond_index[1]])  # within molecules
    mols = [bonded_mol(*m) for m in batch_molecules(batch, loader.elements)]
    write_sdf(tmp_path / "out.sdf", mols)
    back = [m for m in Chem.SDMolSupplier(str(tmp_path / "out.sdf"), removeHs=False)]
    assert [_canon(m) for m in back] == expected
    # positions survive (centred per molecule)
    rec = read_molecules(tmp_path / "out.sdf")[0]
    src = read_molecules(tmp_path / "in.sdf")[0]
    np.testing.assert_allclose(rec.pos, src.pos - src.pos.mean(0), atol=2e-4)
    assert rec.formal_charges == src.formal_charges


def test_arrays_bonds_subset_remove_h_concat_save(tmp_path):
    _write_fixture(tmp_path / "in.sdf")
    records = read_molecules(tmp_path / "in.sdf")
    codes = {1.0: 1, 2.0: 2, 3.0: 3, 1.5: 4}
    arrays = MoleculeArrays.from_molecules(
        [(r.symbols, r.pos) for r in records],
        bonds=[[(i, j, codes[o]) for i, j, o in r.bonds] for r in records],
        formal_charges=[r.formal_charges for r in records],
        smiles=SMILES,
    )
    arrays.save(tmp_path / "a.npz")
    again = MoleculeArrays.load(tmp_path / "a.npz")
    for key in ("bond_index", "bond_type", "bond_ptr", "formal_charge", "smiles"):
        np.testing.assert_array_equal(getattr(again, key), getattr(arrays, key))
    sub = arrays.subset([3, 1])
    assert sub.bonds(0) == arrays.bonds(3) and sub.bonds(1) == arrays.bonds(1)
    np.testing.assert_array_equal(sub.formal_charge, np.concatenate(
        [arrays.formal_charge[arrays.ptr[3]:arrays.ptr[4]], arrays.formal_charge[arrays.ptr[1]:arrays.ptr[2]]]))
    joined = MoleculeArrays.concatenate([arrays.subset([0, 1]), arrays.subset([2, 3, 4])])
    for key in ("pos", "bond_index", "bond_type", "bond_ptr", "formal_charge", "ptr"):
        np.testing.assert_array_equal(getattr(joined, key), getattr(arrays, key))
    heavy = arrays.remove_hydrogens()
    for k, smi in enumerate(SMILES):  # the heavy-atom graph is the SMILES graph
        symbols, pos = heavy.molecule(k)
        n = len(symbols)
        mol = bonded_mol(symbols, pos, heavy.bonds(k), heavy.formal_charge[heavy.ptr[k]:heavy.ptr[k] + n])
        assert _canon(mol) == _canon(Chem.MolFromSmiles(smi))
    with pytest.raises(ValueError, match="outside its molecule"):
        MoleculeArrays.from_molecules([(["C", "O"], np.zeros((2, 3)))], bonds=[[(0, 2, 1)]])
    with pytest.raises(ValueError, match="bond_type codes"):
        MoleculeArrays.from_molecules([(["C", "O"], np.zeros((2, 3)))], bonds=[[(0, 1, 7)]])


def test_qm9_style_sets_have_no_bond_fields(tmp_path):
    arrays = MoleculeArrays.from_molecules([(["C", "H"], np.eye(3)[:2])])
    arrays.save(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as f:
        assert int(f["format_version"]) == 1 and "bond_index" not in f.files
    batch = next(iter(MolLoader(arrays, batch_size=1)))
    assert batch.bond_index is None and batch.bond_type is None and batch.formal_charge is None


def test_pyg_dataset_carries_bonds(tmp_path):
    from moldiff.data.pyg import MolGraphDataset

    _write_fixture(tmp_path / "in.sdf")
    import_dataset(tmp_path / "in.sdf", "chem", root=tmp_path)
    arrays = load_dataset("chem", root=tmp_path)
    ds = MolGraphDataset(arrays)
    for k in range(len(SMILES)):
        item = ds[k]
        bonds = arrays.bonds(k)
        assert item.edge_index.shape == (2, 2 * len(bonds)) and item.edge_attr.shape == (2 * len(bonds),)
        assert item.edge_index[:, 0::2].T.tolist() == [[i, j] for i, j, _ in bonds]
        assert item.edge_index[:, 1::2].T.tolist() == [[j, i] for i, j, _ in bonds]
        assert item.formal_charge.tolist() == arrays.formal_charge[arrays.ptr[k]:arrays.ptr[k + 1]].tolist()
        assert int(item.edge_index.max()) < item.num_nodes
