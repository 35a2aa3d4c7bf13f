"""Inpainting with a bond channel: the fragment's atoms AND bonds kept exactly (every sampler), SDF fragments
(kekulised, hydrogens dropped for heavy-atom models), the model's bonds in the acceptance test, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from moldiff.checkpoint import save_checkpoint
from moldiff.config import ExperimentConfig
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.fragments import load_fragment, make_acceptance
from moldiff.geometry import molecule_pairs
from moldiff.models import build_model
from moldiff.sampling.inpaint import Fragment, InpaintOutput, inpaint
from moldiff.sampling.sampler import SAMPLERS

K = 4  # atom types of the tiny model: C, N, O, F
ELEMENTS = ("C", "N", "O", "F")
BOND_CFG = {"include_charges": False, "parameterization": "x0", "loss_weighting": "snr_clamp",
            "atom_types": "categorical", "bonds": "categorical", "timesteps": 100}
FRAG_BONDS = [(0, 1, 1), (1, 2, 2), (0, 3, 1)]  # pairs (0, 2), (1, 3), (2, 3) carry no bond


def _bond_process(self_condition=False):
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 16, "n_layers": 2, "self_condition": self_condition},
                                      "diffusion": BOND_CFG})
    proc = build_model(cfg, K, bond_prior=torch.tensor([8.0, 2.0, 1.0, 0.5, 0.5], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (zero-initialised output layers would hide the network)
        for p in proc.denoiser.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return proc.eval(), cfg


def _fragment(bonds=FRAG_BONDS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Fragment(pos=1.3 * torch.randn(4, 3, generator=g, dtype=torch.float64), types=torch.tensor([0, 0, 2, 1]),
                    charges=torch.tensor([6.0, 6.0, 8.0, 7.0]), bonds=bonds)


def _fragment_bonds_of(out: InpaintOutput, m: int) -> list[list[tuple[int, int, int]]]:
    return [sorted((i, j, c) for i, j, c in b if i < m and j < m) for b in out.split_bonds()]


def _check_bonds(out: InpaintOutput, counts) -> None:
    i, j = out.bond_index
    assert bool((i < j).all()) and torch.equal(out.batch[i], out.batch[j])
    assert set(out.bond_type.tolist()) <= {1, 2, 3, 4}
    for bonds, n in zip(out.split_bonds(), counts, strict=True):
        assert all(0 <= a < b < n for a, b, _ in bonds) and len({(a, b) for a, b, _ in bonds}) == len(bonds)


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("resample, known_noise", [(1, "fresh"), (2, "fresh"), (2, "bridge")])
def test_fragment_atoms_and_bonds_kept_exactly_every_sampler(method, resample, known_noise):
    proc, _ = _bond_process(self_condition=method == "dpm2")
    frag = _fragment()
    counts = [6, 9, 5]
    out = inpaint(proc, frag, counts, steps=5, method=method, resample=resample, seed=1, known_noise=known_noise)
    assert out.num_graphs == 3 and out.has_bonds
    for types, pos in out.split():
        assert torch.equal(pos[:4], frag.pos) and torch.equal(types[:4], frag.types)
    assert _fragment_bonds_of(out, 4) == [sorted(FRAG_BONDS)] * 3  # exactly the fragment's, and no other
    _check_bonds(out, counts)
    again = inpaint(proc, frag, counts, steps=5, method=method, resample=resample, seed=1, known_noise=known_noise)
    assert torch.equal(out.bond_index, again.bond_index) and torch.equal(out.bond_type, again.bond_type)
    assert torch.equal(out.pos, again.pos)


def test_per_molecule_fragments_combined_fragments_and_retries():
    proc, _ = _bond_process()
    a = _fragment([(0, 1, 2), (2, 3, 3)], seed=1)
    b = _fragment([], seed=2)  # no bond at all between its atoms: none may appear
    out = inpaint(proc, [a, b, a], [7, 6, 8], steps=4, seed=0)
    assert _fragment_bonds_of(out, 4) == [[(0, 1, 2), (2, 3, 3)], [], [(0, 1, 2), (2, 3, 3)]]
    _check_bonds(out, [7, 6, 8])
    two = Fragment.combine([a, _fragment([(0, 2, 4)], seed=3)])
    assert two.bonds == [(0, 1, 2), (2, 3, 3), (4, 6, 4)]
    calls = []

    def reject_first_round(o):  # every molecule is drawn again once: the retry path keeps the bonds
        calls.append(o.num_graphs)
        return torch.tensor([len(calls) > 1] * o.num_graphs)

    out = inpaint(proc, two, [10, 11], steps=3, seed=0, accept=reject_first_round, max_tries=2)
    assert out.tries.tolist() == [2, 2] and bool(out.accepted.all())
    assert _fragment_bonds_of(out, 8) == [[(0, 1, 2), (2, 3, 3), (4, 6, 4)]] * 2
    _check_bonds(out, [10, 11])


def test_fragment_bonds_are_checked():
    with pytest.raises(ValueError, match="bond"):
        _fragment([(0, 4, 1)])  # atom 4 does not exist
    with pytest.raises(ValueError, match="bond"):
        _fragment([(1, 1, 1)])
    with pytest.raises(ValueError, match="code"):
        _fragment([(0, 1, 5)])
    with pytest.raises(ValueError, match="twice"):
        _fragment([(0, 1, 1), (1, 0, 2)])
    assert _fragment([(3, 0, 1)]).bonds == [(0, 3, 1)]
    assert Fragment.combine([_fragment(), _fragment(None)]).bonds is None
    proc, _ = _bond_process()
    with pytest.raises(ValueError, match="needs its bonds"):
        inpaint(proc, _fragment(None), [6], steps=2)


class _BondSpy(nn.Module):
    """Bond-channel denoiser: x0 = pos / 2, type logits favour class 3, bond logits favour class 2 everywhere.

    Records the bond input and the time of every call.
    """

    FAVOURED_TYPE, FAVOURED_BOND = 3, 2
    bond_classes = 5

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, pos, h, t, batch, context=None, bonds=None):
        self.calls.append((bonds.clone(), t.clone()))
        logits = torch.full((pos.shape[0], K), -30.0, dtype=pos.dtype)
        logits[:, self.FAVOURED_TYPE] = 30.0
        bond_logits = torch.full((bonds.shape[0], self.bond_classes), -30.0, dtype=pos.dtype)
        bond_logits[:, self.FAVOURED_BOND] = 30.0
        return 0.5 * pos, logits, bond_logits


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("known_noise", ["fresh", "bridge"])
def test_free_pairs_drawn_from_logits_fixed_pairs_noised(method, known_noise):
    sched = NoiseSchedule("polynomial_2", 100)
    spy = _BondSpy()
    proc = EquivariantDiffusion(spy, sched, K, include_charges=False, parameterization="x0",
                                type_process=CategoricalDiffusion(K, sched),
                                bond_process=CategoricalDiffusion(5, sched))
    frag = _fragment()
    n_mol, n = 20, 7
    out = inpaint(proc, frag, [n] * n_mol, steps=5, method=method, resample=2, seed=0, known_noise=known_noise)
    pairs = molecule_pairs(out.batch)
    fixed_pair = out.fixed[pairs[0]] & out.fixed[pairs[1]]
    cls = torch.zeros(pairs.shape[1], dtype=torch.long)
    key = {(int(a), int(b)): k for k, (a, b) in enumerate(pairs.t().tolist())}
    for (a, b), c in zip(out.bond_index.t().tolist(), out.bond_type.tolist(), strict=True):
        cls[key[(a, b)]] = c
    assert bool((cls[~fixed_pair] == _BondSpy.FAVOURED_BOND).all())  # every free pair from the network's logits
    frag_cls = torch.zeros(6, dtype=torch.long)  # the fragment's 6 pairs in row-major order
    frag_pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for i, j, c in FRAG_BONDS:
        frag_cls[frag_pairs.index((i, j))] = c
    assert torch.equal(cls[fixed_pair], frag_cls.repeat(n_mol))
    # the network reads one-hot classes; the fixed pairs' are q-samples: noised at t = T, clean at t = 0
    frag_onehot = torch.nn.functional.one_hot(frag_cls, 5).to(spy.calls[0][0].dtype).repeat(n_mol, 1)
    for bonds, _ in spy.calls:
        assert bonds.shape == (pairs.shape[1], 5) and torch.equal(bonds.sum(1), torch.ones(bonds.shape[0]).to(bonds))
    first, _ = spy.calls[0]
    last, last_t = spy.calls[-1]
    assert not torch.equal(first[fixed_pair], frag_onehot)
    assert float(last_t.max()) == 0.0 and torch.equal(last[fixed_pair], frag_onehot)
    assert bool(last[~fixed_pair][:, _BondSpy.FAVOURED_BOND].all())


def test_acceptance_judges_growth_by_the_models_bonds():
    frag = _fragment()
    frag.growable = torch.tensor([True, False, False, False])
    accept = make_acceptance(list(ELEMENTS), [frag], require_connected=True)
    far = torch.cat([frag.pos, torch.full((2, 3), 50.0, dtype=torch.float64)])  # far away: no EDM bond anywhere
    base = {"pos": torch.cat([far, far]), "types": torch.zeros(12, dtype=torch.long),
            "charges": torch.zeros(12), "batch": torch.tensor([0] * 6 + [1] * 6), "fixed": torch.zeros(12).bool(),
            "num_graphs": 2}
    frag_b = [(i, j) for i, j, _ in FRAG_BONDS]
    # molecule 0: atom 4 bonds to atom 0 (may grow), 5 to 4: connected, allowed; molecule 1: atom 4 bonds to atom 1
    good = frag_b + [(0, 4), (4, 5)]
    bad = frag_b + [(1, 4), (4, 5)]
    index = torch.tensor(good + [(6 + i, 6 + j) for i, j in bad]).t()
    out = InpaintOutput(**base, bond_index=index, bond_type=torch.ones(index.shape[1], dtype=torch.long))
    assert accept(out).tolist() == [True, False]
    lone = torch.tensor(good[:-1] + [(6 + i, 6 + j) for i, j in good]).t()  # molecule 0: atom 5 unattached
    out = InpaintOutput(**base, bond_index=lone, bond_type=torch.ones(lone.shape[1], dtype=torch.long))
    assert accept(out).tolist() == [False, True]


# ---------------------------------------------------------------------------------------------- fragment files
def _sdf_with_hydrogens(path, smiles="Cc1ccc(N)cc1O", seed=0):
    """An SDF of ``smiles`` with explicit hydrogens, some placed between the heavy atoms, aromatic bonds as type 4."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    hs = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1]
    order = [hs[0], *heavy[:3], *hs[1:3], *heavy[3:], *hs[3:]]  # hydrogens first and in between
    mol = Chem.RenumberAtoms(mol, order)
    path.write_text(Chem.MolToMolBlock(mol, kekulize=False) + "$$$$\n")
    return mol


def test_heavy_atom_fragment_from_sdf_with_hydrogens(tmp_path):
    from rdkit import Chem

    path = tmp_path / "frag.sdf"
    mol = _sdf_with_hydrogens(path)
    assert any(b.GetBondTypeAsDouble() == 1.5 for b in mol.GetBonds())
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    new = {old: k for k, old in enumerate(heavy)}
    pos = mol.GetConformer().GetPositions()
    frag = load_fragment(path, list(ELEMENTS), need_bonds=True, heavy_atoms=True)
    assert frag.num_atoms == len(heavy) == 9
    assert [ELEMENTS[i] for i in frag.types.tolist()] == [mol.GetAtomWithIdx(i).GetSymbol() for i in heavy]
    np.testing.assert_allclose(frag.pos.numpy(), pos[heavy], atol=1e-4)  # the SDF's 4 decimals
    expected = {tuple(sorted((new[b.GetBeginAtomIdx()], new[b.GetEndAtomIdx()]))) for b in mol.GetBonds()
                if b.GetBeginAtomIdx() in new and b.GetEndAtomIdx() in new}
    assert {(i, j) for i, j, _ in frag.bonds} == expected
    codes = [c for _, _, c in frag.bonds]
    assert set(codes) == {1, 2} and codes.count(2) == 3  # the aromatic ring, kekulised
    ring = Chem.MolFromSmiles("Cc1ccc(N)cc1O")  # the kekulised fragment is the same molecule
    rebuilt = Chem.RWMol()
    for i in frag.types.tolist():
        rebuilt.AddAtom(Chem.Atom(ELEMENTS[i]))
    for i, j, c in frag.bonds:
        rebuilt.AddBond(i, j, Chem.BondType.SINGLE if c == 1 else Chem.BondType.DOUBLE)
    rebuilt = rebuilt.GetMol()
    Chem.SanitizeMol(rebuilt)
    assert Chem.MolToSmiles(rebuilt) == Chem.MolToSmiles(ring)
    # --grow hydrogen-bearing: the atoms that carried the dropped hydrogens
    grown = load_fragment(path, list(ELEMENTS), "hydrogen-bearing", need_bonds=True, heavy_atoms=True)
    carried = [mol.GetAtomWithIdx(i).GetTotalNumHs(includeNeighbors=True) > 0 for i in heavy]
    assert grown.growable.tolist() == carried and 0 < sum(carried) < len(heavy)
    # an all-atom model keeps the hydrogens (and fails on an element outside its vocabulary)
    with pytest.raises(ValueError, match="H"):
        load_fragment(path, list(ELEMENTS), need_bonds=True)
    full = load_fragment(path, ["H", *ELEMENTS], need_bonds=True)
    assert full.num_atoms == mol.GetNumAtoms() and len(full.bonds) == mol.GetNumBonds()


def test_xyz_fragment_refused_for_a_bond_model(tmp_path):
    from moldiff.io import write_xyz

    path = tmp_path / "frag.xyz"
    write_xyz(path, [(["C", "O"], np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]]))])
    with pytest.raises(ValueError, match="SDF"):
        load_fragment(path, list(ELEMENTS), need_bonds=True)
    assert load_fragment(path, list(ELEMENTS)).bonds is None  # fine for a model without bonds


# ---------------------------------------------------------------------------------------------- CLI
def _save_model(tmp_path):
    from moldiff.types import DatasetStats

    proc, cfg = _bond_process()
    cfg = cfg.override(data={"remove_h": True})
    stats = DatasetStats(elements=ELEMENTS, n_atoms_hist={9: 1, 11: 2, 12: 1})
    state = proc.state_dict()
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "stats": stats.to_dict(), "model": state, "ema": state})
    return ckpt


def test_cli_fix_writes_the_fragment_and_its_bonds_first(tmp_path, capsys):
    from rdkit import Chem

    from moldiff.cli import main

    ckpt = _save_model(tmp_path)
    path = tmp_path / "frag.sdf"
    _sdf_with_hydrogens(path)
    frag = load_fragment(path, list(ELEMENTS), need_bonds=True, heavy_atoms=True)
    m = frag.num_atoms
    out = tmp_path / "o.sdf"
    assert main(["sample", "--model", str(ckpt), "--fix", str(path), "--num", "3", "--steps", "5",
                 "--out", str(out)]) == 0
    assert "validity" in capsys.readouterr().out.lower()  # the completions were evaluated with their bonds
    written = list(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False))
    assert len(written) == 3
    for mol in written:
        assert mol.GetNumAtoms() > m and mol.GetProp("moldiff_fixed_atoms") == f"1-{m}"
        assert [a.GetSymbol() for a in mol.GetAtoms()][:m] == [ELEMENTS[i] for i in frag.types.tolist()]
        np.testing.assert_allclose(mol.GetConformer().GetPositions()[:m], frag.pos.numpy(), atol=1e-4)
        among = {(min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                  int(b.GetBondTypeAsDouble())) for b in mol.GetBonds()
                 if b.GetBeginAtomIdx() < m and b.GetEndAtomIdx() < m}
        assert among == set(frag.bonds)
    # relaxation (mmff, the fragment fixed) and XYZ output take the same molecules; --no-hydrogens: heavy atoms only
    xyz = tmp_path / "o.xyz"
    assert main(["sample", "--model", str(ckpt), "--fix", str(path), "--num", "2", "--steps", "3", "--out", str(xyz),
                 "--relax", "mmff", "--no-hydrogens", "--no-evaluate"]) == 0
    from moldiff.io import read_molecules

    recs = read_molecules(xyz)
    assert len(recs) == 2 and all(r.symbols[:m] == [ELEMENTS[i] for i in frag.types.tolist()] for r in recs)
    assert all("H" not in r.symbols for r in recs)


def test_cli_refuses_an_xyz_fragment_for_a_bond_model(tmp_path, capsys):
    from moldiff.cli import main
    from moldiff.io import write_xyz

    ckpt = _save_model(tmp_path)
    path = tmp_path / "frag.xyz"
    write_xyz(path, [(["C", "C", "O"], np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.1, 1.2, 0.0]]))])
    out = tmp_path / "o.sdf"
    capsys.readouterr()
    assert main(["sample", "--model", str(ckpt), "--fix", str(path), "--num", "2", "--steps", "3",
                 "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and "SDF" in err[0]
    assert not out.exists()
