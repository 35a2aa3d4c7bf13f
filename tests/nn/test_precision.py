"""Tests for mixed precision in moldiff/nn (``EGNNDenoiser(precision="bf16")``) and its config wiring.

CPU autocast supports bfloat16, so everything here runs without a GPU. Tolerances (float32 inputs):

* bf16 vs fp32 outputs of the same weights: relative L2 error < 5e-2 (measured 0.3-2 % for
  default-initialised tiny denoisers, 0.9 % for the shipped ``qm9`` model);
* E(3) equivariance in bf16: max error < 1e-3 x the largest output entry (measured <= 1e-5 x: the
  invariant MLP inputs are computed in float32, so a rotation changes them only by float32
  round-off, which rarely moves a bf16 rounding);
* zero centre of mass of ``eps_pos``: float32 round-off, 1e-6 x the largest entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn.util.test import assert_equivariant

from moldiff.checkpoint import load_checkpoint
from moldiff.config import PRECISIONS as CONFIG_PRECISIONS
from moldiff.config import ExperimentConfig
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.loader import MolLoader
from moldiff.models import build_model
from moldiff.nn.denoiser import PRECISIONS, fully_connected_edges
from moldiff.nn.egnn import EquivariantUpdate, no_autocast
from moldiff.training.trainer import Trainer

PRETRAINED = Path(__file__).resolve().parents[2] / "moldiff" / "pretrained"
REL_TOL_VS_FP32 = 5e-2
REL_TOL_EQUIVARIANCE = 1e-3


def randomize_(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def inputs(make_batch):
    mol = make_batch((4, 3, 5), context_nf=2, center=True)
    h = torch.cat([mol.one_hot / 4, mol.charges / 10], dim=1)
    return mol, h, torch.tensor([0.1, 0.5, 0.9])


# ---------------------------------------------------------------------------- options
def test_config_and_denoiser_share_the_precision_names():
    assert tuple(PRECISIONS) == CONFIG_PRECISIONS


def test_unknown_precision_rejected(make_denoiser):
    with pytest.raises(ValueError, match="precision"):
        make_denoiser(precision="fp16x")
    net = make_denoiser()
    with pytest.raises(ValueError, match="precision"):
        net.precision = "fp16"
    net.precision = "bf16"
    assert net.precision == "bf16" and "precision='bf16'" in repr(net)


@pytest.mark.parametrize("node_projection", [True, False])
def test_state_dict_is_the_same_in_every_mode(node_projection):
    base = ExperimentConfig.from_dict({"model": {"hidden_nf": 16, "n_layers": 2}})
    ref = build_model(base, 5).state_dict()
    other = build_model(base.override(model={"node_projection": node_projection, "precision": "bf16"}), 5)
    assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    other.load_state_dict(ref)  # strict


def test_config_fields_reach_the_denoiser():
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 16, "n_layers": 2, "node_projection": False,
                                                "precision": "bf16"}})
    den = build_model(cfg, 5).denoiser
    assert den.precision == "bf16"
    flags = {m.node_projection for m in den.modules() if hasattr(m, "node_projection")}
    assert flags == {False}


# ---------------------------------------------------------------------------- bf16 outputs
@pytest.mark.parametrize("node_projection", [True, False])
def test_bf16_outputs_are_float32_and_close_to_fp32(node_projection, inputs, make_denoiser):
    mol, h, t = inputs
    net = make_denoiser(n_layers=3, hidden_nf=32, context_nf=2, node_projection=node_projection)
    with torch.no_grad():
        ref = net(mol.pos, h, t, mol.batch, mol.context)
        net.precision = "bf16"
        out = net(mol.pos, h, t, mol.batch, mol.context)
    for o, r in zip(out, ref, strict=True):
        assert o.dtype == torch.float32 and o.shape == r.shape
        assert rel_err(o, r) < REL_TOL_VS_FP32
    assert not torch.equal(out[1], ref[1]), "bf16 mode computed exactly the fp32 result: autocast not active?"


def test_bf16_mlps_run_in_bf16_and_positions_in_float32(inputs, make_denoiser):
    mol, h, t = inputs
    net = make_denoiser(n_layers=2, precision="bf16")
    seen: dict[str, torch.dtype] = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.dtype
        return hook

    for name, m in net.named_modules():
        if isinstance(m, (torch.nn.Linear, EquivariantUpdate)):
            m.register_forward_hook(record(name))
    net(mol.pos, h, t, mol.batch)
    linears = {k: v for k, v in seen.items() if not k.endswith("update")}
    updates = {k: v for k, v in seen.items() if k.endswith("update")}
    assert linears and set(linears.values()) == {torch.bfloat16}
    assert len(updates) == 2 and set(updates.values()) == {torch.float32}


def test_bf16_eps_pos_zero_com(inputs, make_denoiser):
    mol, h, t = inputs
    with torch.no_grad():
        eps_pos, _ = randomize_(make_denoiser(n_layers=2, precision="bf16"))(mol.pos, h, t, mol.batch)
    com = torch.zeros(mol.num_graphs, 3).index_add_(0, mol.batch, eps_pos)
    scale = float(eps_pos.abs().max())
    assert scale > 1.0  # the coordinate path is not ~0 (EDM's init would make this check trivial)
    torch.testing.assert_close(com, torch.zeros_like(com), rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("node_projection", [True, False])
def test_bf16_e3_equivariant(node_projection, inputs, make_denoiser):
    """Rotation (with and without reflection) and translation, float32 inputs, bf16 MLPs."""
    mol, h, t = inputs
    net = randomize_(make_denoiser(n_layers=2, node_projection=node_projection, precision="bf16"))
    with torch.no_grad():
        scale = float(torch.cat([o.abs().flatten() for o in net(mol.pos, h, t, mol.batch)]).max())
    errors = assert_equivariant(
        lambda pos, h, t, batch: net(pos, h, t, batch),
        args_in=[mol.pos, h, t, mol.batch],
        irreps_in=["cartesian_points", None, None, None],
        irreps_out=["1o", None],
        tolerance=REL_TOL_EQUIVARIANCE * scale,
    )
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}


def test_coordinate_update_is_float32_exact_under_autocast(inputs):
    """With fixed invariants, rotating+translating pos moves the update's output to float32 round-off.

    phi_ij comes from the bf16 MLP but does not depend on pos here, so any bf16 rounding of the
    position arithmetic (differences, norms, the weighted sum) would show as a ~1e-3 relative error.
    """
    mol, _, _ = inputs
    layer = randomize_(EquivariantUpdate(16, 1))
    ei = fully_connected_edges(mol.batch)
    h, e = torch.randn(len(mol.pos), 16), torch.rand(ei.shape[1], 1)
    rot, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rot, shift = rot.float(), torch.tensor([10.0, -20.0, 5.0])
    moved = mol.pos @ rot.T + shift  # outside autocast: a float32 matmul
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(h, mol.pos, ei, e)
        out_g = layer(h, moved, ei, e)
        out_r = layer(h, moved.bfloat16().float(), ei, e)
    assert out.dtype == out_g.dtype == torch.float32
    expected = out @ rot.T + shift
    atol = 1e-6 * float(expected.abs().max())
    torch.testing.assert_close(out_g, expected, rtol=0, atol=atol)
    # teeth: the same layer fed bf16-rounded positions misses by far more
    assert (out_r - expected).abs().max() > 100 * atol


def test_bf16_leaves_a_float64_model_in_float64(inputs, make_denoiser, float64):
    """Autocast casts only float32, so the float64 equivariance tests also cover bf16 mode's wiring."""
    mol, h, t = inputs
    net = randomize_(make_denoiser(n_layers=2, dtype=torch.float64))
    args = (mol.pos.double(), h.double(), t.double(), mol.batch)
    ref = net(*args)
    net.precision = "bf16"
    for o, r in zip(net(*args), ref, strict=True):
        assert o.dtype == torch.float64
        torch.testing.assert_close(o, r, rtol=0, atol=0)


def test_no_autocast_is_null_outside_autocast():
    pos = torch.randn(4, 3)
    with no_autocast(pos):
        assert not torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with no_autocast(pos):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------------- training and shipped models
def test_training_runs_in_bf16(tmp_path):
    """A few Trainer steps (forward + backward + clipping + AdamW + EMA) with ``model.precision: bf16``."""
    rng = np.random.default_rng(0)
    mols = []
    for i in range(8):
        k = 3 + i % 4
        mols.append((list(rng.choice(["H", "C", "N", "O"], size=k)), rng.normal(size=(k, 3)) * 1.2))
    arrays = MoleculeArrays.from_molecules(mols)
    cfg = ExperimentConfig.from_dict({
        "model": {"hidden_nf": 16, "n_layers": 2, "precision": "bf16"},
        "diffusion": {"timesteps": 50},
        "train": {"lr": 1e-3, "batch_size": 4, "max_steps": 3, "eval_every_steps": 3, "n_eval_samples": 2,
                  "eval_sample_steps": 3, "log_every_steps": 1, "checkpoint_every_steps": 100},
    })
    torch.manual_seed(0)
    proc = build_model(cfg, len(arrays.elements))
    assert proc.denoiser.precision == "bf16"
    before = [p.detach().clone() for p in proc.parameters()]
    stats = {"elements": list(arrays.elements), "n_atoms_hist": {3: 2, 4: 2, 5: 2, 6: 2}, "max_n_atoms": 6}
    trainer = Trainer(proc, cfg, stats, MolLoader(arrays, batch_size=4, seed=0).iter_batches, tmp_path,
                      progress=False)
    state = trainer.fit()
    assert state.step == 3
    params = list(proc.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    log = (tmp_path / "log.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in log[1:]]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize("name", ["qm9", "qm9-alpha"])
def test_shipped_checkpoint_loads_in_every_mode(name):
    """Checkpoints written before ``node_projection``/``precision`` existed load strictly in all modes."""
    payload = load_checkpoint(PRETRAINED / f"{name}.pt")
    config = ExperimentConfig.from_dict(payload["config"])
    assert (config.model.node_projection, config.model.precision) == (True, "fp32")
    stats = payload["stats"]
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([5, 9, 12])
    batch = torch.repeat_interleave(torch.arange(3), counts)
    outs = {}
    for np_flag, precision in [(True, "fp32"), (False, "fp32"), (True, "bf16")]:
        cfg = config.override(model={"node_projection": np_flag, "precision": precision})
        proc = build_model(cfg, len(stats["elements"]), int(stats.get("context_nf", 0)))
        proc.load_state_dict(payload["ema"])  # strict
        den = proc.denoiser.eval()
        if not outs:
            n = int(counts.sum())
            pos = torch.randn(n, 3, generator=gen)
            h = torch.randn(n, den.in_node_nf, generator=gen)
            ctx = torch.randn(3, den.context_nf, generator=gen) if den.context_nf else None
            args = (pos, h, torch.tensor([0.2, 0.5, 0.8]), batch, ctx)
        with torch.no_grad():
            outs[np_flag, precision] = den(*args)
    ref = outs[True, "fp32"]
    for o, r in zip(outs[False, "fp32"], ref, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    for o, r in zip(outs[True, "bf16"], ref, strict=True):
        assert o.dtype == torch.float32 and rel_err(o, r) < REL_TOL_VS_FP32
