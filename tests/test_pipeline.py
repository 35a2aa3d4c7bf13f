"""The high-level API (``moldiff.pipeline``): shipped models, ``sample_raw`` / ``iter_samples`` /
``sample`` (shapes, order, reproducibility) and a checkpoint the trainer just wrote. A few seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moldiff.checkpoint import load_checkpoint
from moldiff.config import ExperimentConfig
from moldiff.pipeline import PRETRAINED_DIR, MolDiff, from_checkpoint, load_model, resolve_checkpoint, shipped_models

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "configs" / "tiny.yaml"
QM9_ELEMENTS = ["H", "C", "N", "O", "F"]


def _same(a, b) -> bool:
    """Two ``sample_raw`` results are identical (symbols and bit-identical positions)."""
    if len(a) != len(b):
        return False
    return all(sa == sb and np.array_equal(pa, pb) for (sa, pa), (sb, pb) in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def qm9() -> MolDiff:
    return load_model("qm9")


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """``last.pt`` of a 4-step run of the tiny config on 64 QM9 molecules (the trainer's own format)."""
    from moldiff.training.run import run_training

    run = tmp_path_factory.mktemp("tiny_run")
    cfg = ExperimentConfig.load_yaml(TINY).override(
        data={"max_molecules": 64},
        train={"epochs": 1, "batch_size": 16, "eval_every_steps": 4, "n_eval_samples": 2, "eval_sample_steps": 2,
               "val_molecules": 16, "checkpoint_every_steps": 4, "device": "cpu"},
    )
    state = run_training(cfg, run, progress=False)
    assert state.step == 4
    return run / "last.pt"


# ---------------------------------------------------------------------------- shipped models
def test_shipped_models_and_resolution():
    names = shipped_models()
    assert "qm9" in names and "qm9-alpha" in names
    assert resolve_checkpoint("qm9") == PRETRAINED_DIR / "qm9.pt"
    with pytest.raises(ValueError, match="unknown model 'nope'; shipped models: .*qm9"):
        resolve_checkpoint("nope")


def test_load_shipped_model(qm9):
    assert qm9.name == "qm9" and qm9.elements == QM9_ELEMENTS and qm9.conditioning == ()
    assert qm9.max_atoms == 29 and qm9.process.timesteps == 1000
    assert not qm9.process.training
    method, steps = qm9.default_sampling  # recorded in the checkpoint (benchmarks/README.md, the speedrun)
    assert method == "dpm2sde" and steps == 50 and qm9.default_spacing == "quadratic"
    assert qm9.process.categorical_types and not qm9.process.include_charges
    hist = qm9.node_distribution.histogram
    assert min(hist) >= 1 and max(hist) == qm9.max_atoms


def test_edm_recipe_model_stays_shipped():
    """The model shipped as ``qm9`` until session 5 (EDM's recipe, eps, 5 x 128) is kept as ``qm9-edm``."""
    model = load_model("qm9-edm")
    assert model.conditioning == () and model.elements == QM9_ELEMENTS
    assert model.config.diffusion.parameterization == "eps" and not model.process.categorical_types
    assert model.default_sampling == ("dpm2sde", 100)


@pytest.mark.parametrize("name", [n for n in shipped_models() if n.startswith("qm9-") and n != "qm9-edm"])
def test_conditional_shipped_models_load(name):
    model = load_model(name)
    assert model.conditioning == (name.removeprefix("qm9-"),) and model.elements == QM9_ELEMENTS


# ---------------------------------------------------------------------------- sampling
def test_sample_raw_shapes_and_reproducibility(qm9):
    a = qm9.sample_raw(3, steps=4, seed=7, method="ancestral")
    assert len(a) == 3
    for symbols, pos in a:
        assert set(symbols) <= set(QM9_ELEMENTS) and 1 <= len(symbols) <= qm9.max_atoms
        assert isinstance(pos, np.ndarray) and pos.dtype == np.float64 and pos.shape == (len(symbols), 3)
        assert np.isfinite(pos).all()
    assert _same(a, qm9.sample_raw(3, steps=4, seed=7, method="ancestral"))  # same seed: bit-identical
    assert not _same(a, qm9.sample_raw(3, steps=4, seed=8, method="ancestral"))
    fixed = qm9.sample_raw(2, steps=2, seed=0, num_atoms=[6, 9])
    assert [len(s) for s, _ in fixed] == [6, 9]


def test_sample_raw_does_not_touch_the_global_rng(qm9):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    qm9.sample_raw(2, steps=2, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_iter_samples_batches_in_order_and_matches_sample_raw(qm9):
    batches = list(qm9.iter_samples(5, steps=3, seed=1, batch_size=2))
    assert [k for k, _ in batches] == list(range(len(batches)))
    assert all(1 <= len(mols) <= 2 for _, mols in batches) and sum(len(m) for _, m in batches) == 5
    flat = [m for _, mols in batches for m in mols]
    assert _same(flat, qm9.sample_raw(5, steps=3, seed=1, batch_size=2))


def test_iter_samples_checks_arguments_before_sampling(qm9):
    for kwargs in ({"steps": 0}, {"steps": 1001}, {"method": "nope"}, {"num_atoms": 99}, {"seed": -1},
                   {"target": {"alpha": 80.0}}):
        with pytest.raises(ValueError):
            qm9.iter_samples(2, **kwargs)  # raises at the call, not at the first next()
    with pytest.raises(ValueError, match=">= 1"):
        qm9.sample_raw(0)


def test_sample_gives_rdkit_molecules_with_the_sampled_geometry(qm9):
    pytest.importorskip("rdkit")
    raw = qm9.sample_raw(2, steps=3, seed=2, num_atoms=7)
    mols = qm9.sample(2, steps=3, seed=2, num_atoms=7)
    for mol, (symbols, pos) in zip(mols, raw, strict=True):
        assert [a.GetSymbol() for a in mol.GetAtoms()] == symbols
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), pos, atol=1e-6)


# ---------------------------------------------------------------------------- a checkpoint just trained
def test_trained_checkpoint_loads_and_samples(trained_ckpt):
    model = load_model(trained_ckpt)
    assert model.name == str(trained_ckpt) and model.elements == QM9_ELEMENTS
    assert model.config.model.hidden_nf == 32 and model.config.model.n_layers == 2
    assert model.process.timesteps == 100
    payload = load_checkpoint(trained_ckpt)
    for key, value in model.process.state_dict().items():  # load_model takes the EMA weights
        assert torch.equal(value, payload["ema"][key]), key
    raw = from_checkpoint(trained_ckpt, use_ema=False)
    assert any(not torch.equal(v, payload["ema"][k]) for k, v in raw.process.state_dict().items())
    a = model.sample_raw(3, steps=5, seed=0)
    assert len(a) == 3 and all(p.shape == (len(s), 3) for s, p in a)
    assert _same(a, load_model(trained_ckpt).sample_raw(3, steps=5, seed=0))  # a fresh load: same molecules


def test_shipped_drugs_model_writes_its_bonds_and_hydrogens():
    """The shipped ``drugs`` model: heavy atoms + bond channel; RDKit hydrogens for the valid molecules."""
    from rdkit import Chem

    model = load_model("drugs")
    assert model.has_bonds and model.adds_hydrogens and "H" not in model.elements
    assert model.default_sampling == ("dpm2sde", 100)
    triples = [m for _, b in model.iter_samples(3, steps=5, seed=0, with_bonds=True) for m in b]
    mols = model.sample(3, steps=5, seed=0)
    for (symbols, _pos, bonds), mol in zip(triples, mols, strict=True):
        heavy = [a for a in mol.GetAtoms() if a.GetSymbol() != "H"]
        assert len(heavy) == len(symbols) and all(0 <= i < j < len(symbols) for i, j, _ in bonds)
        try:
            Chem.SanitizeMol(Chem.Mol(mol))
        except Exception:  # noqa: BLE001 - an invalid molecule keeps the model's atoms only
            assert mol.GetNumAtoms() == len(symbols)
