"""Tests for moldiff/nn/attention.py and the ``eqattn`` backbone of EGNNDenoiser / ``model.kind: eqattn``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.config import ExperimentConfig
from moldiff.geometry import molecule_pairs, pair_lookup, remove_mean
from moldiff.models import build_model
from moldiff.models.egnn import BOND_CLASSES
from moldiff.nn.attention import DenseLayout, EquivariantAttention, segment_softmax
from moldiff.nn.denoiser import EGNNDenoiser, fully_connected_edges

TOL = 1e-9
K = 4  # atom types of the toy molecules


def _randomize(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def _inputs(sizes=(4, 3, 5), seed=0):
    """Centred float64 molecules with one-hot types, times, a context, bonds and a self-conditioning estimate."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    n = batch.shape[0]
    pos = remove_mean(1.5 * torch.randn(n, 3, generator=gen, dtype=torch.float64), batch, len(sizes))
    h = torch.nn.functional.one_hot(torch.randint(0, K, (n,), generator=gen), K).double()
    t = torch.rand(len(sizes), generator=gen, dtype=torch.float64)
    ctx = torch.randn(len(sizes), 2, generator=gen, dtype=torch.float64)
    p = molecule_pairs(batch).shape[1]
    bonds = torch.nn.functional.one_hot(torch.randint(0, BOND_CLASSES, (p,), generator=gen), BOND_CLASSES).double()
    x0 = (remove_mean(torch.randn(n, 3, generator=gen, dtype=torch.float64), batch, len(sizes)),
          torch.rand(n, K, generator=gen, dtype=torch.float64))
    fixed = (torch.rand(n, generator=gen) < 0.3).double()
    return pos, h, t, batch, ctx, bonds, x0, fixed


@pytest.fixture
def full_net(float64):
    """A float64 eqattn denoiser with every optional input: context, self-conditioning, bonds, fragment flag."""
    torch.manual_seed(0)
    net = EGNNDenoiser(K, context_nf=2, hidden_nf=16, n_layers=2, backbone="eqattn", heads=4, edge_nf=8,
                       self_condition=True, bond_classes=BOND_CLASSES, fragment_input=True)
    return _randomize(net.double())


# ---------------------------------------------------------------------------------------------- helpers
def test_segment_softmax_sums_to_one_per_receiver():
    logits = torch.randn(7, 3, dtype=torch.float64) * 50
    index = torch.tensor([0, 0, 2, 2, 2, 3, 0])
    w = segment_softmax(logits, index, 5)
    sums = torch.zeros(5, 3, dtype=torch.float64).index_add_(0, index, w)
    torch.testing.assert_close(sums[[0, 2, 3]], torch.ones(3, 3, dtype=torch.float64))
    assert (sums[[1, 4]] == 0).all() and torch.isfinite(w).all()
    assert segment_softmax(torch.zeros(2, 1, dtype=torch.bfloat16), torch.tensor([0, 0]), 1).dtype == torch.float32


def test_dense_layout_places_atoms_and_edges():
    batch = torch.tensor([0, 0, 0, 1, 1])
    edges = fully_connected_edges(batch)
    lay = DenseLayout(batch, edges)
    assert (lay.num_graphs, lay.size) == (2, 3)
    assert lay.node_slot.tolist() == [0, 1, 2, 3, 4]
    dense = lay.to_dense(torch.arange(1.0, 6.0))
    assert dense.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    row, col = edges
    b, i, j = lay.edge_slot // 9, (lay.edge_slot % 9) // 3, lay.edge_slot % 3
    assert torch.equal(b, batch[row]) and torch.equal(3 * b + i, row) and torch.equal(3 * b + j, col)


def test_layer_matches_a_per_edge_reference(float64):
    """The padded matrix products compute the same attention as gathering q, k, v per edge."""
    torch.manual_seed(0)
    net = _randomize(EquivariantAttention(5, hidden_nf=16, n_layers=1, heads=4, edge_nf=8), std=0.2)
    layer = net.layers[0]
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    edges = fully_connected_edges(batch)[:, ::2]  # a sparse, not fully connected, intra-molecule edge set
    h, pos = torch.randn(7, 16), torch.randn(7, 3)
    static = torch.randn(edges.shape[1], 16)
    got_h, _ = layer(h, pos, edges, static, DenseLayout(batch, edges))
    row, col = edges
    d2 = ((pos[row] - pos[col]) ** 2).sum(1, keepdim=True)
    e = torch.nn.functional.silu(layer.edge(torch.cat([layer.rbf(d2), static], 1)))
    q, k, v = layer.qkv(layer.norm_att(h)).view(7, 3, 4, 4).unbind(1)
    logits = (q[row] * k[col]).sum(-1) / 2.0 + layer.bias(e)
    att = segment_softmax(logits, row, 7)
    agg = torch.zeros(7, 16).index_add_(0, row, (att[..., None] * v[col]).reshape(-1, 16))
    want = h + layer.out(agg)
    want = want + layer.ffn(layer.norm_ffn(want))
    torch.testing.assert_close(got_h, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- backbone
def test_backbone_e3_equivariant(float64):
    torch.manual_seed(0)
    net = _randomize(EquivariantAttention(5, hidden_nf=16, n_layers=3, heads=4, edge_nf=8, extra_edge_nf=2))
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    edges = fully_connected_edges(batch)
    extra = torch.randn(edges.shape[1], 2)
    errors = assert_equivariant(
        lambda h, pos: net(h, pos, edges, extra, batch=batch),
        args_in=[torch.randn(7, 5), torch.randn(7, 3)],
        irreps_in=[None, "cartesian_points"], irreps_out=[None, "cartesian_points"], tolerance=TOL,
    )
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}


def test_backbone_needs_its_edge_features():
    net = EquivariantAttention(5, hidden_nf=8, n_layers=1, heads=2, edge_nf=4, extra_edge_nf=1)
    edges = fully_connected_edges(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="edge_extra"):
        net(torch.randn(3, 5), torch.randn(3, 3), edges)
    with pytest.raises(ValueError, match="multiple of heads"):
        EquivariantAttention(5, hidden_nf=10, heads=4)


# ---------------------------------------------------------------------------------------------- denoiser
def test_denoiser_e3_equivariant_with_every_input(full_net):
    pos, h, t, batch, ctx, bonds, x0, fixed = _inputs()

    def f(x, x0_pos):
        return full_net(remove_mean(x, batch, 3), h, t, batch, ctx, self_cond=(x0_pos, x0[1]), bonds=bonds,
                        fixed=fixed)

    # rotations and reflections; translations are removed by the re-centring (checked below)
    errors = assert_equivariant(f, args_in=[pos, x0[0]], irreps_in=["cartesian_points", "cartesian_points"],
                                irreps_out=["1o", f"{K}x0e", f"{BOND_CLASSES}x0e"], tolerance=TOL)
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}
    shift = torch.tensor([3.0, -1.0, 2.0])
    moved = full_net(pos + shift, h, t, batch, ctx, self_cond=(x0[0] - shift, x0[1]), bonds=bonds, fixed=fixed)
    for a, b in zip(full_net(pos, h, t, batch, ctx, self_cond=x0, bonds=bonds, fixed=fixed), moved, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_denoiser_permutation_equivariant_and_bond_head_symmetric(full_net):
    pos, h, t, batch, ctx, bonds, x0, fixed = _inputs(sizes=(5,), seed=3)
    perm = torch.tensor([3, 0, 4, 1, 2])  # new atom k is old atom perm[k]
    pairs = molecule_pairs(batch)
    old_of_new = pair_lookup(pairs, perm[pairs], 5)  # pair (a, b) of the permuted molecule, as an old pair
    a = full_net(pos, h, t, batch, ctx[:1], self_cond=x0, bonds=bonds, fixed=fixed)
    b = full_net(pos[perm], h[perm], t, batch, ctx[:1], self_cond=(x0[0][perm], x0[1][perm]),
                 bonds=bonds[old_of_new], fixed=fixed[perm])
    torch.testing.assert_close(a[0][perm], b[0], rtol=0, atol=TOL)
    torch.testing.assert_close(a[1][perm], b[1], rtol=0, atol=TOL)
    torch.testing.assert_close(a[2][old_of_new], b[2], rtol=0, atol=TOL)  # the pair (j, i) reads as (i, j)


def test_batched_equals_one_by_one(full_net):
    pos, h, t, batch, ctx, bonds, x0, fixed = _inputs(sizes=(4, 6))
    out = full_net(pos, h, t, batch, ctx, self_cond=x0, bonds=bonds, fixed=fixed)
    pairs = molecule_pairs(batch)
    for g in range(2):
        m, pm = batch == g, batch[pairs[0]] == g
        single = full_net(pos[m], h[m], t[g : g + 1], torch.zeros(int(m.sum()), dtype=torch.long), ctx[g : g + 1],
                          self_cond=(x0[0][m], x0[1][m]), bonds=bonds[pm], fixed=fixed[m])
        for whole, one, rows in zip(out, single, (m, m, pm), strict=True):
            torch.testing.assert_close(one, whole[rows], rtol=1e-12, atol=1e-12)


def test_molecules_do_not_interact(full_net):
    pos, h, t, batch, ctx, bonds, x0, fixed = _inputs()
    moved = pos.clone()
    moved[batch == 0] += torch.randn(int((batch == 0).sum()), 3)
    a = full_net(pos, h, t, batch, ctx, self_cond=x0, bonds=bonds, fixed=fixed)
    b = full_net(moved, h, t, batch, ctx, self_cond=x0, bonds=bonds, fixed=fixed)
    rest = batch != 0
    torch.testing.assert_close(a[0][rest], b[0][rest], rtol=0, atol=0)
    assert not torch.allclose(a[0][~rest], b[0][~rest])


def test_optional_inputs_change_the_output(full_net):
    pos, h, t, batch, ctx, bonds, x0, fixed = _inputs()
    base = full_net(pos, h, t, batch, ctx, self_cond=x0, bonds=bonds, fixed=fixed)
    for kw in ({"self_cond": None}, {"bonds": torch.roll(bonds, 1, dims=1)}, {"fixed": 1 - fixed}):
        args = {"self_cond": x0, "bonds": bonds, "fixed": fixed, **kw}
        assert not torch.allclose(base[0], full_net(pos, h, t, batch, ctx, **args)[0])


def test_bf16_precision_keeps_positions_in_float32():
    torch.manual_seed(0)
    net = EGNNDenoiser(K, hidden_nf=16, n_layers=2, backbone="eqattn", heads=4, edge_nf=8)
    pos, h, t, batch, *_ = _inputs()
    ref = net(pos.float(), h.float(), t.float(), batch)
    net.precision = "bf16"
    low = net(pos.float(), h.float(), t.float(), batch)
    assert low[0].dtype == low[1].dtype == torch.float32
    torch.testing.assert_close(low[0], ref[0], rtol=0.1, atol=0.05)


def test_state_dict_prefixes_and_unknown_backbone():
    egnn = EGNNDenoiser(K, hidden_nf=8, n_layers=1)
    attn = EGNNDenoiser(K, hidden_nf=8, n_layers=1, backbone="eqattn", heads=2)
    assert all(k.startswith("egnn.") for k in egnn.state_dict())  # the EGNN's keys are unchanged
    assert all(k.startswith("eqattn.") for k in attn.state_dict())
    assert "backbone='eqattn'" in repr(attn) and "backbone" not in repr(egnn).split("\n")[1]
    with pytest.raises(ValueError, match="backbone must be one of"):
        EGNNDenoiser(K, backbone="transformer")


# ---------------------------------------------------------------------------------------------- config / registry
def test_build_model_eqattn_with_bonds_self_conditioning_and_fragments(make_bond_batch):
    cfg = ExperimentConfig.from_dict({
        "model": {"kind": "eqattn", "hidden_nf": 16, "n_layers": 2, "heads": 4, "edge_nf": 8,
                  "self_condition": True, "fragment_input": True},
        "diffusion": {"include_charges": False, "parameterization": "x0", "loss_weighting": "snr_clamp",
                      "atom_types": "categorical", "bonds": "categorical", "timesteps": 100},
    })
    proc = build_model(cfg, K)
    net = proc.denoiser
    assert net.backbone == "eqattn" and net.bond_classes == BOND_CLASSES and net.self_condition
    assert net.eqattn.layers[0].heads == 4 and net.eqattn.layers[0].edge.out_features == 8
    out = proc.loss(make_bond_batch((4, 3)), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss).all()
    out.loss.mean().backward()
    assert net.eqattn.embedding.weight.grad.abs().sum() > 0 and net.bond_head[0].weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_and_sampling(tmp_path):
    """A saved eqattn model (bonds, self-conditioning) loads through the public API and samples."""
    from moldiff.checkpoint import save_checkpoint
    from moldiff.pipeline import from_checkpoint
    from moldiff.types import DatasetStats

    torch.manual_seed(0)
    cfg = ExperimentConfig.from_dict({
        "model": {"kind": "eqattn", "hidden_nf": 16, "n_layers": 2, "self_condition": True},
        "diffusion": {"include_charges": False, "parameterization": "x0", "loss_weighting": "snr_clamp",
                      "atom_types": "categorical", "bonds": "categorical", "timesteps": 100},
    })
    proc = build_model(cfg, K)
    stats = DatasetStats(elements=("C", "N", "O", "F"), n_atoms_hist={3: 1, 4: 2, 5: 1})
    path = tmp_path / "eqattn.pt"
    state = proc.state_dict()
    save_checkpoint(path, {"config": cfg.to_dict(), "stats": stats.to_dict(), "model": state, "ema": state})
    model = from_checkpoint(path)
    assert model.process.denoiser.backbone == "eqattn" and model.has_bonds
    for key, value in model.process.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    samples = [m for _, b in model.iter_samples(3, steps=4, seed=0, with_bonds=True) for m in b]
    assert len(samples) == 3 and all(np.isfinite(pos).all() for _, pos, _ in samples)


def test_rbf_cutoff_reaches_every_layer():
    """``model.rbf_cutoff`` (drug-sized molecules span ~20 Å) sets the last radial centre everywhere."""
    cfg = ExperimentConfig.from_dict({"model": {"kind": "eqattn", "hidden_nf": 16, "n_layers": 2, "rbf_cutoff": 20.0}})
    net = build_model(cfg, K).denoiser.eqattn
    assert float(net.rbf.centers[-1]) == 20.0
    assert all(float(layer.rbf.centers[-1]) == 20.0 for layer in net.layers)
    assert ExperimentConfig.from_dict(cfg.to_dict()).model.rbf_cutoff == 20.0
    default = build_model(ExperimentConfig.from_dict({"model": {"kind": "eqattn", "hidden_nf": 16, "n_layers": 1}}), K)
    assert float(default.denoiser.eqattn.rbf.centers[-1]) == 10.0


@pytest.mark.parametrize("bad", [{"heads": 0}, {"edge_nf": -1}, {"heads": 2.5}, {"edge_nf": True},
                                 {"rbf_cutoff": 0.0}, {"rbf_cutoff": float("nan")}, {"rbf_cutoff": float("inf")}])
def test_config_checks(bad):
    with pytest.raises(ValueError, match="model."):
        ExperimentConfig.from_dict({"model": bad})


def test_hidden_not_a_multiple_of_heads_is_refused_at_build():
    cfg = ExperimentConfig.from_dict({"model": {"kind": "eqattn", "hidden_nf": 12, "heads": 8, "n_layers": 1}})
    with pytest.raises(ValueError, match="multiple of heads"):
        build_model(cfg, 5)


def test_tiny_model_overfits_two_molecules(make_batch):
    """The normal training loss on two fixed molecules falls by a clear factor (> 4) in 300 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        cfg = ExperimentConfig.from_dict({"model": {"kind": "eqattn", "hidden_nf": 32, "n_layers": 2, "heads": 4},
                                          "diffusion": {"timesteps": 100}})
        proc = build_model(cfg, 5)
        mol = make_batch((4, 5), center=True)

        def loss() -> float:  # the same 32 draws of (t, noise) before and after
            proc.eval()
            with torch.no_grad():
                return sum(float(proc.loss(mol, generator=torch.Generator().manual_seed(s)).loss.mean())
                           for s in range(32)) / 32

        before = loss()
        opt = torch.optim.Adam(proc.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        proc.train()
        for _ in range(300):
            opt.zero_grad()
            proc.loss(mol, generator=gen).loss.mean().backward()
            opt.step()
        after = loss()
        assert math.isfinite(after) and after < before / 4, (before, after)  # measured: 491 -> 73 in 1.2 s
    finally:
        torch.set_num_threads(threads)
