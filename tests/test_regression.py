"""Golden regression: a fixed denoiser forward pass, one reverse step and the loss vs tests/fixtures/expected.npz.

The file stores the *inputs and weights* as well as the outputs, so the comparison does not depend
on torch's RNG or initialisers: it changes only if the maths of the EGNN, the denoiser, the schedule,
the loss or ``p(z_s | z_t)`` changes.

Regenerate (after an intended change only) with::

    MOLDIFF_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_regression.py

That run rewrites the file and FAILS on purpose, so a regeneration is never silently accepted;
rerun without the switch, review ``git diff --stat tests/fixtures/expected.npz`` and commit with a message
saying why the numbers changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.types import MolBatch

GOLDEN = Path(__file__).parent / "fixtures" / "expected.npz"
REGEN = os.environ.get("MOLDIFF_REGEN_GOLDEN") == "1"
K, FEATURES, HIDDEN, LAYERS, T = 5, 6, 16, 2, 1000
RTOL, ATOL = 1e-9, 1e-12


def build_process() -> EquivariantDiffusion:
    net = EGNNDenoiser(FEATURES, hidden_nf=HIDDEN, n_layers=LAYERS)
    return EquivariantDiffusion(net, NoiseSchedule("polynomial_2", T), K).double()


def fresh_inputs_and_weights() -> dict[str, np.ndarray]:
    """Only used to (re)generate the golden file."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    proc = build_process()
    with torch.no_grad():  # O(1) weights everywhere, so the coordinate path is not ~0 as at EDM init
        for p in proc.denoiser.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    counts = torch.tensor([4, 3, 5])
    batch = torch.repeat_interleave(torch.arange(3), counts)
    n = int(counts.sum())
    types = torch.randint(0, K, (n,), generator=gen)
    d = {
        "in/pos": 1.5 * torch.randn(n, 3, generator=gen, dtype=torch.float64),
        "in/one_hot": torch.nn.functional.one_hot(types, K).double(),
        "in/charges": torch.tensor([1.0, 6, 7, 8, 9], dtype=torch.float64)[types].unsqueeze(1),
        "in/batch": batch,
        "in/z_pos": torch.randn(n, 3, generator=gen, dtype=torch.float64),
        "in/z_h": torch.randn(n, FEATURES, generator=gen, dtype=torch.float64),
        "in/t": torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64),
        "in/s": torch.tensor([0.8, 0.45, 0.0], dtype=torch.float64),
        "in/noise_pos": torch.randn(n, 3, generator=gen, dtype=torch.float64),
        "in/noise_h": torch.randn(n, FEATURES, generator=gen, dtype=torch.float64),
        "in/t_int": torch.tensor([0, 10, 700]),
    }
    d["in/z_pos"] -= (
        torch.zeros(3, 3, dtype=torch.float64).index_add_(0, batch, d["in/z_pos"])[batch]
        / counts[batch, None]
    )
    d["in/noise_pos"] -= (
        torch.zeros(3, 3, dtype=torch.float64).index_add_(0, batch, d["in/noise_pos"])[batch]
        / counts[batch, None]
    )
    out = {k: v.numpy() for k, v in d.items()}
    out.update({f"weights/{k}": v.numpy() for k, v in proc.denoiser.state_dict().items()})
    return out


def compute_outputs(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the code under test on the stored inputs and weights."""
    proc = build_process()
    weights = {
        k.removeprefix("weights/"): torch.from_numpy(v) for k, v in stored.items() if k.startswith("weights/")
    }
    proc.denoiser.load_state_dict(weights)
    x = {k.removeprefix("in/"): torch.from_numpy(v) for k, v in stored.items() if k.startswith("in/")}
    batch = x["batch"]
    mol = MolBatch(pos=x["pos"], one_hot=x["one_hot"], charges=x["charges"], batch=batch, num_graphs=3)
    noise = (x["noise_pos"], x["noise_h"])
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out["eps_pos"], out["eps_h"] = proc.denoiser(x["z_pos"], x["z_h"], x["t"], batch)
        out["zs_pos"], out["zs_h"] = proc.p_zs_given_zt(
            x["z_pos"], x["z_h"], x["t"], x["s"], batch, 3, noise=noise
        )
        proc.train()
        out["loss_train_l2"] = proc.loss(mol, t_int=x["t_int"], noise=noise).loss
        proc.eval()
        out["loss_eval_vlb"] = proc.loss(mol, t_int=x["t_int"], noise=noise).loss
        out["gamma"] = proc.schedule.gamma_table
    return {f"out/{k}": v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if REGEN:
        data = fresh_inputs_and_weights()
        data.update(compute_outputs(data))
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(GOLDEN, **data)
        pytest.fail(
            f"MOLDIFF_REGEN_GOLDEN=1: rewrote {GOLDEN}; rerun without the switch, review and commit it"
        )
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing; generate it with MOLDIFF_REGEN_GOLDEN=1 (see module docstring)")
    with np.load(GOLDEN) as f:
        return dict(f)


def test_golden_file_contents(golden):
    assert {
        "out/eps_pos",
        "out/eps_h",
        "out/zs_pos",
        "out/zs_h",
        "out/loss_train_l2",
        "out/loss_eval_vlb",
        "out/gamma",
    } <= set(golden)
    assert golden["out/eps_pos"].shape == (12, 3) and golden["out/zs_h"].shape == (12, FEATURES)
    assert golden["out/gamma"].shape == (T + 1,)


@pytest.mark.parametrize(
    "key", ["eps_pos", "eps_h", "zs_pos", "zs_h", "loss_train_l2", "loss_eval_vlb", "gamma"]
)
def test_matches_golden(key, golden):
    got = compute_outputs(golden)[f"out/{key}"]
    expected = golden[f"out/{key}"]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(
        got,
        expected,
        rtol=RTOL,
        atol=ATOL,
        err_msg=(f"{key} changed; if intended, regenerate with MOLDIFF_REGEN_GOLDEN=1 (see this module)"),
    )


def test_golden_is_not_trivial(golden):
    """The stored case exercises every path: non-negligible coordinate output, L_0 and L_t terms."""
    assert np.abs(golden["out/eps_pos"]).max() > 1e-2
    assert golden["in/t_int"][0] == 0 and golden["in/t_int"][-1] > 0
    assert np.all(np.isfinite(golden["out/loss_eval_vlb"]))
