"""Fragment-conditioned training: the forward process with fixed atoms, the masked loss, the flagged denoiser."""

import pytest
import torch
from e3nn.util.test import assert_equivariant
from torch import nn

from moldiff.config import ExperimentConfig
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.geometry import molecule_pairs, pair_classes, remove_mean, scatter_mean
from moldiff.models import build_model
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.types import MolBatch

BUILT = {
    "gauss-eps": {},
    "gauss-vlb": {"loss_type": "vlb"},
    "gauss-x0-sc": {"parameterization": "x0", "loss_weighting": "snr_clamp"},
    "cat-eps": {"atom_types": "categorical", "include_charges": False},
    "cat-bonds": {"atom_types": "categorical", "include_charges": False, "bonds": "categorical",
                  "parameterization": "x0", "loss_weighting": "snr_clamp"},
    "cat-bonds-sc": {"atom_types": "categorical", "include_charges": False, "bonds": "categorical",
                     "parameterization": "x0", "loss_weighting": "snr_clamp"},
}


def _process(name: str) -> EquivariantDiffusion:
    cfg = ExperimentConfig.from_dict({
        "model": {"hidden_nf": 8, "n_layers": 1, "fragment_input": True, "self_condition": name.endswith("-sc")},
        "diffusion": {"timesteps": 50, **BUILT[name]}})
    torch.manual_seed(0)
    proc = build_model(cfg, 5, type_prior=torch.tensor([4.0, 3, 1, 1, 1]),
                       bond_prior=torch.tensor([8.0, 2, 1, 0.5, 0.5]) if "bonds" in name else None).double()
    with torch.no_grad():
        for p in proc.denoiser.parameters():
            p.add_(0.2 * torch.randn(p.shape, dtype=p.dtype))
    return proc


def _batch(bonds: bool = True) -> tuple[MolBatch, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    counts = torch.tensor([3, 5, 4])
    n = int(counts.sum())
    types = torch.randint(0, 5, (n,), generator=g)
    mol = MolBatch(pos=torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.4 + 3.0,
                   one_hot=torch.nn.functional.one_hot(types, 5).double(),
                   atomic_numbers=torch.tensor([1.0, 6, 7, 8, 9], dtype=torch.float64)[types].unsqueeze(1),
                   batch=torch.repeat_interleave(torch.arange(3), counts), num_graphs=3)
    if bonds:
        mol.bond_index = torch.tensor([[0, 1, 3, 4, 5, 8, 9], [1, 2, 4, 5, 6, 9, 10]])
        mol.bond_type = torch.tensor([1, 2, 1, 1, 4, 3, 1])
    # molecule 0: nothing fixed; molecule 1: atoms 3, 4, 6 fixed; molecule 2: atoms 8, 9, 10 fixed
    fixed = torch.zeros(n, dtype=torch.bool)
    fixed[[3, 4, 6, 8, 9, 10]] = True
    return mol, fixed


class _Spy(nn.Module):
    """Wraps a denoiser: records its inputs, optionally adds ``delta`` to its outputs on fixed atoms / pairs."""

    def __init__(self, net: nn.Module, delta: float = 0.0) -> None:
        super().__init__()
        self.net, self.delta, self.calls = net, delta, []
        self.fragment_input, self.self_condition, self.bond_classes = True, net.self_condition, net.bond_classes

    def forward(self, pos, h, t, batch, context=None, fixed=None, **kw):
        self.calls.append({"pos": pos, "h": h, "t": t, "fixed": fixed, **kw})
        out = list(self.net(pos, h, t, batch, context, fixed=fixed, **kw))
        if self.delta and fixed is not None:
            w = self.delta * fixed.to(pos.dtype).unsqueeze(1)
            out[0], out[1] = out[0] + w, out[1] + w
            if len(out) > 2:
                i, j = molecule_pairs(batch)
                out[2] = out[2] + self.delta * (fixed[i] & fixed[j]).to(pos.dtype).unsqueeze(1)
        return tuple(out)


def _with(proc: EquivariantDiffusion, net: nn.Module) -> EquivariantDiffusion:
    other = EquivariantDiffusion(net, proc.schedule, proc.num_classes, include_charges=proc.include_charges,
                                 norm_values=proc.norm_values, loss_type=proc.loss_type,
                                 parameterization=proc.parameterization, weighting=proc.weighting,
                                 type_process=proc.type_process, type_loss_weight=proc.type_loss_weight,
                                 bond_process=proc.bond_process, bond_loss_weight=proc.bond_loss_weight)
    return other.double()


def test_place_fixed_is_the_clean_fragment_at_the_noisy_centre_of_mass(float64):
    mol, fixed = _batch()
    g = torch.Generator().manual_seed(1)
    pos = remove_mean(mol.pos, mol.batch, 3)
    z = remove_mean(torch.randn(12, 3, generator=g), mol.batch, 3)
    out = EquivariantDiffusion.place_fixed(z, pos, fixed, mol.batch, 3)
    assert torch.equal(out[~fixed], z[~fixed])
    fb = mol.batch[fixed]
    shift = scatter_mean(z[fixed], fb, 3) - scatter_mean(pos[fixed], fb, 3)
    assert torch.allclose(out[fixed], pos[fixed] + shift[fb], atol=1e-14)
    assert torch.allclose(scatter_mean(out, mol.batch, 3), torch.zeros(3, 3), atol=1e-14)  # CoM unchanged
    assert torch.allclose(scatter_mean(out[fixed], fb, 3)[1:], scatter_mean(z[fixed], fb, 3)[1:], atol=1e-14)


@pytest.mark.parametrize("name", list(BUILT))
def test_forward_process_fixed_atoms_enter_clean(name, float64):
    proc = _process(name)
    spy = _Spy(proc.denoiser)
    proc2 = _with(proc, spy).train()
    mol, fixed = _batch("bonds" in name)
    g = torch.Generator().manual_seed(2)
    eps = proc.sample_noise(mol.batch, 3, torch.float64, g)
    t_int = torch.tensor([30, 40, 45])
    proc2.loss(mol, generator=torch.Generator().manual_seed(3), t_int=t_int, noise=eps, fixed=fixed)
    call = spy.calls[-1]
    assert torch.equal(call["fixed"], fixed)
    pos, h = proc.normalize(mol)
    gamma = proc.schedule.gamma(t_int.double() / 50)
    noisy, _ = proc.q_sample(pos, h, gamma, mol.batch, eps[0], eps[1])
    z = call["pos"]
    assert torch.allclose(z[~fixed], noisy[~fixed], atol=1e-13)  # free atoms: the ordinary z_t
    fb = mol.batch[fixed]
    shift = scatter_mean(noisy[fixed], fb, 3) - scatter_mean(pos[fixed], fb, 3)
    assert torch.allclose(z[fixed], pos[fixed] + shift[fb], atol=1e-13)  # the clean fragment, translated
    assert torch.allclose(scatter_mean(z, mol.batch, 3), torch.zeros(3, 3), atol=1e-13)  # zero CoM
    if proc.categorical_types:
        assert torch.equal(call["h"][fixed], mol.one_hot[fixed] / proc.norm_values[1])  # exact clean labels
    else:
        assert torch.equal(call["h"][fixed], h[fixed])  # the clean scaled one-hot and charge
    if proc.has_bonds:
        pairs = molecule_pairs(mol.batch)
        both = fixed[pairs[0]] & fixed[pairs[1]]
        clean = torch.nn.functional.one_hot(pair_classes(pairs, mol.bond_index, mol.bond_type, 12), 5).double()
        assert torch.equal(call["bonds"][both], clean[both])


@pytest.mark.parametrize("name", [n for n in BUILT if not n.endswith("-sc")])
def test_loss_ignores_the_networks_output_on_fixed_atoms(name, float64):
    """No loss term reads the output on fixed atoms / pairs (self-conditioned models are left out: their
    extra pass feeds the whole estimate, fixed rows included, back as an input, as in sampling)."""
    proc = _process(name)
    mol, fixed = _batch("bonds" in name)
    losses = []
    for delta in (0.0, 3.0):
        p = _with(proc, _Spy(proc.denoiser, delta)).train()
        out = p.loss(mol, generator=torch.Generator().manual_seed(4), t_int=torch.tensor([0, 7, 33]), fixed=fixed)
        losses.append(out.loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    # ... but not on free ones (the perturbation would show): a check that the test can fail
    free_spy = _with(proc, _Spy(proc.denoiser, 3.0)).train()
    out = free_spy.loss(mol, generator=torch.Generator().manual_seed(4), t_int=torch.tensor([0, 7, 33]), fixed=~fixed)
    assert not torch.allclose(out.loss, losses[0])


def test_nothing_fixed_equals_no_mask(float64):
    """An all-False mask (a molecule not drawn) trains exactly as no mask."""
    proc = _process("cat-bonds-sc").train()
    mol, fixed = _batch()
    a = proc.loss(mol, generator=torch.Generator().manual_seed(4))
    b = proc.loss(mol, generator=torch.Generator().manual_seed(4), fixed=torch.zeros_like(fixed))
    assert torch.equal(a.loss, b.loss)


# ------------------------------------------------------------------------------------------ the network
@pytest.fixture
def flagged_net(float64):
    torch.manual_seed(0)
    net = EGNNDenoiser(6, context_nf=2, hidden_nf=16, n_layers=2, fragment_input=True).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def _inputs():
    g = torch.Generator().manual_seed(7)
    batch = torch.tensor([0] * 4 + [1] * 3 + [2] * 5)
    pos = torch.randn(12, 3, generator=g) * 1.5
    h = torch.randn(12, 6, generator=g)
    fixed = torch.tensor([1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0], dtype=torch.bool)
    return pos, h, torch.tensor([0.1, 0.5, 0.9]), batch, torch.randn(3, 2, generator=g), fixed


def test_flagged_denoiser_e3_equivariant(flagged_net):
    pos, h, t, batch, ctx, fixed = _inputs()
    errors = assert_equivariant(
        lambda pos, h, t, batch, ctx, fixed: flagged_net(pos, h, t, batch, ctx, fixed=fixed),
        args_in=[pos, h, t, batch, ctx, fixed.double()],
        irreps_in=["cartesian_points", None, None, None, None, None], irreps_out=["1o", None], tolerance=1e-9)
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}  # rotation, reflection, translation


def test_flagged_denoiser_permutation_equivariant_and_flag_matters(flagged_net):
    pos, h, t, batch, ctx, fixed = _inputs()
    g = torch.Generator().manual_seed(3)
    perm = torch.arange(12)
    for b in range(3):
        idx = (batch == b).nonzero().flatten()
        perm[idx] = idx[torch.randperm(len(idx), generator=g)]
    ref = flagged_net(pos, h, t, batch, ctx, fixed=fixed)
    out = flagged_net(pos[perm], h[perm], t, batch, ctx, fixed=fixed[perm])
    for a, b in zip(ref, out, strict=True):
        assert torch.allclose(a[perm], b, atol=1e-12)
    other = flagged_net(pos, h, t, batch, ctx, fixed=~fixed)
    assert not torch.allclose(ref[0], other[0])  # the flag is read
    # no flag = all zeros (unconditional use)
    zero = flagged_net(pos, h, t, batch, ctx, fixed=torch.zeros(12, dtype=torch.bool))
    for a, b in zip(zero, flagged_net(pos, h, t, batch, ctx), strict=True):
        assert torch.equal(a, b)


def test_config_validation():
    with pytest.raises(ValueError, match="model.fragment_input"):
        ExperimentConfig.from_dict({"model": {"fragment_input": 1}})
    with pytest.raises(ValueError, match="train.fragment_prob"):
        ExperimentConfig.from_dict({"train": {"fragment_prob": 1.5}})
    with pytest.raises(ValueError, match="train.fragment_free"):
        ExperimentConfig.from_dict({"train": {"fragment_free": [3, 2]}})
    with pytest.raises(ValueError, match="train.fragment_free"):
        ExperimentConfig.from_dict({"train": {"fragment_free": [0, 2]}})
    with pytest.raises(ValueError, match="needs model.fragment_input"):
        ExperimentConfig.from_dict({"train": {"fragment_prob": 0.5}})
    cfg = ExperimentConfig.from_dict({"model": {"fragment_input": True},
                                      "train": {"fragment_prob": 0.5, "fragment_free": [2, 5]}})
    assert cfg.train.fragment_free == (2, 5) and cfg.to_dict()["train"]["fragment_free"] == [2, 5]
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
