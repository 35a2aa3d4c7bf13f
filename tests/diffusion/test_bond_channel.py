"""The categorical bond channel: atom pairs, the edge head (equivariance), the loss, samplers, checkpoints."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.checkpoint import save_checkpoint
from moldiff.config import ExperimentConfig
from moldiff.geometry import molecule_pairs, pair_classes, pair_lookup, remove_mean
from moldiff.models import build_model
from moldiff.models.egnn import BOND_CLASSES
from moldiff.nn.denoiser import EGNNDenoiser, fully_connected_edges
from moldiff.sampling.sampler import SAMPLERS, Sampler
from moldiff.types import MolBatch

K = 4  # atom types of the toy molecules
BOND_CFG = {"include_charges": False, "parameterization": "x0", "loss_weighting": "snr_clamp",
            "atom_types": "categorical", "bonds": "categorical", "timesteps": 100}


# ---------------------------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("sizes", [(1,), (2, 3), (4, 1, 5), (6,)])
def test_molecule_pairs_are_every_pair_once(sizes):
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pairs = molecule_pairs(batch)
    first = np.cumsum([0, *sizes[:-1]])
    expected = [(f + i, f + j) for f, n in zip(first, sizes, strict=True)
                for i, j in itertools.combinations(range(n), 2)]
    assert [tuple(p) for p in pairs.t().tolist()] == expected
    edges = fully_connected_edges(batch)  # the directed edges restricted to i < j, in the same order
    assert torch.equal(edges[:, edges[0] < edges[1]], pairs)


def test_pair_lookup_and_classes():
    batch = torch.tensor([0, 0, 0, 1, 1])
    pairs = molecule_pairs(batch)  # (0,1) (0,2) (1,2) (3,4)
    assert pair_lookup(pairs, torch.tensor([[4, 1, 0], [3, 2, 2]]), 5).tolist() == [3, 2, 1]
    cls = pair_classes(pairs, torch.tensor([[2, 3], [0, 4]]), torch.tensor([2, 3]), 5)
    assert cls.tolist() == [0, 2, 0, 3]
    assert pair_classes(pairs, None, None, 5).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="pair"):
        pair_lookup(pairs, torch.tensor([[0], [3]]), 5)  # atoms of two molecules
    with pytest.raises(ValueError, match="pair"):
        pair_lookup(pairs, torch.tensor([[1], [1]]), 5)


# ---------------------------------------------------------------------------------------------- network
@pytest.fixture
def bond_net(float64):
    torch.manual_seed(0)
    net = EGNNDenoiser(K, hidden_nf=16, n_layers=2, bond_classes=BOND_CLASSES).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net


def _inputs(sizes=(4, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    n = batch.shape[0]
    pos = remove_mean(torch.randn(n, 3, generator=gen, dtype=torch.float64), batch, len(sizes))
    h = torch.nn.functional.one_hot(torch.randint(0, K, (n,), generator=gen), K).double()
    p = molecule_pairs(batch).shape[1]
    bonds = torch.nn.functional.one_hot(torch.randint(0, BOND_CLASSES, (p,), generator=gen), BOND_CLASSES).double()
    t = torch.rand(len(sizes), generator=gen, dtype=torch.float64)
    return pos, h, t, batch, bonds


def test_bond_logits_are_e3_invariant_and_positions_equivariant(bond_net):
    pos, h, t, batch, bonds = _inputs()

    def f(x):
        return bond_net(remove_mean(x, batch, 2), h, t, batch, bonds=bonds)

    # rotations and reflections ("1o" / "0e" under O(3)), translations via the re-centring
    assert_equivariant(f, args_in=[pos], irreps_in=["cartesian_points"],
                       irreps_out=["1o", f"{K}x0e", f"{BOND_CLASSES}x0e"], tolerance=1e-9)
    shifted = bond_net(remove_mean(pos + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64), batch, 2), h, t,
                       batch, bonds=bonds)
    for u, v in zip(f(pos), shifted, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-10)


def test_bond_logits_follow_a_permutation_of_atoms(bond_net):
    pos, h, t, batch, bonds = _inputs(sizes=(5,), seed=3)
    perm = torch.tensor([3, 0, 4, 1, 2])  # new atom k is old atom perm[k]
    inv = torch.argsort(perm)
    pairs = molecule_pairs(batch)
    # the pair (a, b) of the permuted molecule is the pair (perm[a], perm[b]) of the original
    old_of_new = pair_lookup(pairs, perm[pairs], 5)
    a = bond_net(pos, h, t, batch, bonds=bonds)
    b = bond_net(pos[perm], h[perm], t, batch, bonds=bonds[old_of_new])
    torch.testing.assert_close(a[0][perm], b[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(a[1][perm], b[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(a[2][old_of_new], b[2], rtol=0, atol=1e-10)
    assert torch.equal(perm[inv], torch.arange(5))


def test_the_bond_input_changes_the_output(bond_net):
    pos, h, t, batch, bonds = _inputs()
    a = bond_net(pos, h, t, batch, bonds=bonds)
    b = bond_net(pos, h, t, batch, bonds=torch.roll(bonds, 1, dims=1))
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[2], b[2])
    with pytest.raises(ValueError, match="bonds of shape"):
        bond_net(pos, h, t, batch)


# ---------------------------------------------------------------------------------------------- process
def _bond_process(hidden=16, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": hidden, "n_layers": layers}, "diffusion": BOND_CFG})
    return build_model(cfg, K, bond_prior=torch.tensor([8.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)), cfg


def test_config_checks():
    with pytest.raises(ValueError, match="atom_types"):
        ExperimentConfig.from_dict({"diffusion": {"bonds": "categorical", "include_charges": False}})
    with pytest.raises(ValueError, match="diffusion.bonds"):
        ExperimentConfig.from_dict({"diffusion": {"bonds": "yes"}})


def test_loss_needs_bonds_in_the_data_and_trains(make_bond_batch):
    proc, _ = _bond_process()
    assert proc.has_bonds and proc.denoiser.bond_classes == BOND_CLASSES
    mol = make_bond_batch()
    out = proc.loss(mol, generator=torch.Generator().manual_seed(0))
    assert out.loss.shape == (3,) and torch.isfinite(out.loss).all()
    out.loss.mean().backward()
    assert proc.denoiser.bond_head[0].weight.grad.abs().sum() > 0
    bare = MolBatch(pos=mol.pos, one_hot=mol.one_hot, atomic_numbers=mol.atomic_numbers, batch=mol.batch,
                    num_graphs=3)
    with pytest.raises(ValueError, match="bonds"):
        proc.loss(bare)


def test_tiny_model_learns_the_bonds(fit_batch, make_bond_batch):
    """Overfit one batch: the bond cross-entropy at low noise falls far below its starting value."""
    proc, _ = _bond_process(hidden=32)
    mol = make_bond_batch((4, 5))
    pos, _ = proc.normalize(mol)
    pairs = molecule_pairs(mol.batch)
    target = pair_classes(pairs, mol.bond_index, mol.bond_type, pos.shape[0])

    def bond_ce():
        proc.eval()
        with torch.no_grad():
            t = torch.full((2,), 0.1)
            onehot = torch.nn.functional.one_hot(target, BOND_CLASSES).float()
            b_t = proc.bond_process.q_sample(onehot, t[mol.batch[pairs[0]]], generator=torch.Generator().manual_seed(1))
            h_t = mol.one_hot / proc.norm_values[1]
            out = proc.denoise(pos, h_t, t, mol.batch, bonds=b_t)
            return float(torch.nn.functional.cross_entropy(out[2], target))

    before = bond_ce()
    fit_batch(proc, mol, steps=300, lr=3e-3, seed=0)
    assert bond_ce() < before / 4


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("method", SAMPLERS)
def test_samplers_return_the_models_bonds(method):
    proc, _ = _bond_process()
    proc.eval()
    out = Sampler(proc).sample([4, 6, 3], steps=6, seed=2, method=method)
    again = Sampler(proc).sample([4, 6, 3], steps=6, seed=2, method=method)
    assert out.has_bonds and torch.equal(out.bond_index, again.bond_index)
    i, j = out.bond_index
    assert bool((i < j).all()) and torch.equal(out.batch[i], out.batch[j])
    assert set(out.bond_type.tolist()) <= {1, 2, 3, 4}
    per_mol = out.split_bonds()
    assert len(per_mol) == 3 and all(0 <= a < b < n for bonds, n in zip(per_mol, (4, 6, 3), strict=True)
                                     for a, b, _ in bonds)


def test_checkpoint_round_trip_writes_the_models_bonds(tmp_path):
    from rdkit import Chem

    from moldiff.pipeline import from_checkpoint
    from moldiff.types import DatasetStats

    proc, cfg = _bond_process()
    stats = DatasetStats(elements=("C", "N", "O", "F"), n_atoms_hist={3: 1, 4: 2, 5: 1})
    path = tmp_path / "bonds.pt"
    state = proc.state_dict()
    save_checkpoint(path, {"config": cfg.to_dict(), "stats": stats.to_dict(), "model": state, "ema": state})
    model = from_checkpoint(path)
    assert model.has_bonds
    torch.testing.assert_close(model.process.bond_process.prior, proc.bond_process.prior)
    triples = [m for _, b in model.iter_samples(4, steps=5, seed=0, with_bonds=True) for m in b]
    mols = model.sample(4, steps=5, seed=0)
    for (symbols, _pos, bonds), mol in zip(triples, mols, strict=True):
        assert mol.GetNumAtoms() == len(symbols) and mol.GetNumBonds() == len(bonds)
        block = Chem.MolToMolBlock(mol, kekulize=False)
        assert Chem.MolFromMolBlock(block, sanitize=False, removeHs=False).GetNumBonds() == len(bonds)


def test_to_rdkit_keeps_the_given_bonds_and_adds_hydrogens():
    from rdkit import Chem

    from moldiff.pipeline import to_rdkit

    pos = np.array([[0.0, 0.0, 0.0], [1.52, 0.0, 0.0], [2.1, 1.2, 0.0]])
    mol = to_rdkit(["C", "C", "O"], pos, [(0, 1, 1), (1, 2, 1)])
    assert mol.GetNumAtoms() == 3 and Chem.MolToSmiles(mol) == "CCO"
    with_h = to_rdkit(["C", "C", "O"], pos, [(0, 1, 1), (1, 2, 1)], add_hydrogens=True)
    assert with_h.GetNumAtoms() == 9
    np.testing.assert_allclose(with_h.GetConformer().GetPositions()[:3], pos)
    bad = to_rdkit(["C", "O"], pos[:2], [(0, 1, 3)], add_hydrogens=True)  # C#O: invalid valence, left as is
    assert bad.GetNumAtoms() == 2
    with pytest.raises(ValueError, match="hydrogen_placement must be one of"):
        to_rdkit(["C", "C", "O"], pos, [(0, 1, 1), (1, 2, 1)], add_hydrogens=True, hydrogen_placement="xtb")


def test_hydrogen_placement_mmff_keeps_heavy_atoms_and_lowers_the_energy():
    """``hydrogen_placement="mmff"`` moves only the added hydrogens, to lower MMFF energy than RDKit's
    computed positions; ``"rdkit"`` is exactly ``Chem.AddHs(addCoords=True)``. The heavy atoms are a
    slightly twisted (E)-pent-2-enol, the kind of imperfect geometry a model emits."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from moldiff.pipeline import to_rdkit

    ref = Chem.AddHs(Chem.MolFromSmiles("C/C=C/CCO"))
    AllChem.EmbedMolecule(ref, randomSeed=3)
    AllChem.MMFFOptimizeMolecule(ref)
    heavy = Chem.RemoveHs(ref)
    pos = heavy.GetConformer().GetPositions() + np.random.default_rng(0).normal(0, 0.12, (heavy.GetNumAtoms(), 3))
    symbols = [a.GetSymbol() for a in heavy.GetAtoms()]
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondTypeAsDouble())) for b in heavy.GetBonds()]

    def energy(m):
        return AllChem.MMFFGetMoleculeForceField(m, AllChem.MMFFGetMoleculeProperties(m)).CalcEnergy()

    placed = {p: to_rdkit(symbols, pos, bonds, add_hydrogens=True, hydrogen_placement=p) for p in ("rdkit", "mmff")}
    plain = Chem.AddHs(to_rdkit(symbols, pos, bonds), addCoords=True)
    np.testing.assert_array_equal(placed["rdkit"].GetConformer().GetPositions(), plain.GetConformer().GetPositions())
    for m in placed.values():
        assert m.GetNumAtoms() == ref.GetNumAtoms()
        np.testing.assert_array_equal(m.GetConformer().GetPositions()[: len(symbols)], pos)
    moved = np.abs(placed["mmff"].GetConformer().GetPositions() - plain.GetConformer().GetPositions()).max()
    assert moved > 1e-3 and energy(placed["mmff"]) < energy(placed["rdkit"]) - 1.0


def test_cli_writes_the_models_bonds(tmp_path):
    from rdkit import Chem

    from moldiff.cli import main
    from moldiff.types import DatasetStats

    proc, cfg = _bond_process()
    cfg = cfg.override(data={"remove_h": True})
    stats = DatasetStats(elements=("C", "N", "O", "F"), n_atoms_hist={3: 1, 4: 2, 5: 1})
    state = proc.state_dict()
    ckpt = tmp_path / "bonds.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "stats": stats.to_dict(), "model": state, "ema": state})
    out = tmp_path / "s.sdf"
    assert main(["sample", "--model", str(ckpt), "--num", "5", "--steps", "5", "--out", str(out),
                 "--no-hydrogens", "--no-evaluate"]) == 0
    from moldiff.pipeline import from_checkpoint

    triples = [m for _, b in from_checkpoint(ckpt).iter_samples(5, steps=5, seed=0, with_bonds=True) for m in b]
    written = list(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False))
    assert [m.GetNumBonds() for m in written] == [len(b) for _, _, b in triples]
    assert [m.GetNumAtoms() for m in written] == [len(s) for s, _, _ in triples]
    assert main(["sample", "--model", str(ckpt), "--num", "2", "--steps", "5", "--out", str(tmp_path / "s.xyz"),
                 "--no-evaluate"]) == 0
    assert main(["sample", "--model", str(ckpt), "--num", "2", "--steps", "5", "--out", str(tmp_path / "r.sdf"),
                 "--hydrogen-placement", "rdkit", "--no-evaluate"]) == 0
