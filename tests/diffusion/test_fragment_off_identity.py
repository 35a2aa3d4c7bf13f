"""Ordinary training is unchanged by fragment conditioning when it is off (``fragment_prob = 0``, no flag).

``tests/fixtures/fragment_off_reference.npz`` holds losses and gradients (three fixed random
projections and the norm) of five built models (Gaussian eps / VLB / x0 + self-conditioning,
categorical eps, categorical with bonds), two loss calls each, plus the weights after a 3-step
:class:`~moldiff.training.trainer.Trainer` run, all computed in float64 by the code *before*
fragment conditioning existed (commit 247888f). The same numbers computed now must agree to
rounding (on the machine that wrote the file they were bit-identical, float32 too). Only APIs that
existed then are used here, so the file can be regenerated from an old checkout (run from outside
the repository, so that the old package is the one imported)::

    git archive 247888f moldiff | tar -x -C /tmp/old
    cd /tmp && PYTHONPATH=/tmp/old /work/main/.venv/bin/python /work/main/tests/diffusion/test_fragment_off_identity.py
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

from moldiff.config import ExperimentConfig
from moldiff.models import build_model
from moldiff.types import MolBatch

REF = Path(__file__).resolve().parents[1] / "fixtures" / "fragment_off_reference.npz"

CFGS = {
    "gauss-eps": {},
    "gauss-vlb": {"loss_type": "vlb"},
    "gauss-x0-sc": {"parameterization": "x0", "loss_weighting": "snr_clamp"},
    "cat-eps": {"atom_types": "categorical", "include_charges": False},
    "cat-bonds": {"atom_types": "categorical", "include_charges": False, "bonds": "categorical",
                  "parameterization": "x0", "loss_weighting": "snr_clamp"},
}


def _batch(bonds: bool) -> MolBatch:
    g = torch.Generator().manual_seed(5)
    counts = torch.tensor([3, 5, 4])
    n = int(counts.sum())
    types = torch.randint(0, 5, (n,), generator=g)
    mol = MolBatch(pos=torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.4,
                   one_hot=torch.nn.functional.one_hot(types, 5).double(),
                   atomic_numbers=torch.tensor([1.0, 6, 7, 8, 9], dtype=torch.float64)[types].unsqueeze(1),
                   batch=torch.repeat_interleave(torch.arange(3), counts), num_graphs=3)
    if bonds:
        mol.bond_index = torch.tensor([[0, 1, 3, 4, 5, 8, 9], [1, 2, 4, 5, 6, 9, 10]])
        mol.bond_type = torch.tensor([1, 2, 1, 1, 4, 3, 1])
    return mol


def _summary(vec: torch.Tensor) -> np.ndarray:
    proj = torch.randn(3, vec.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.cat([proj @ vec, vec.norm().reshape(1)]).detach().numpy()


def _loss_values() -> dict[str, np.ndarray]:
    out = {}
    for name, diffusion in CFGS.items():
        cfg = ExperimentConfig.from_dict({
            "model": {"hidden_nf": 8, "n_layers": 2, "self_condition": name.endswith("-sc")},
            "diffusion": {"timesteps": 50, **diffusion}})
        torch.manual_seed(0)
        proc = build_model(cfg, 5, type_prior=torch.tensor([4.0, 3, 1, 1, 1]),
                           bond_prior=torch.tensor([8.0, 2, 1, 0.5, 0.5]) if "bonds" in name else None).double()
        with torch.no_grad():  # no zero-initialised layer may hide a difference
            for p in proc.denoiser.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
        proc.train()
        mol, gen = _batch("bonds" in name), torch.Generator().manual_seed(11)
        for rep in range(2):
            lo = proc.loss(mol, generator=gen)
            proc.zero_grad()
            lo.loss.mean().backward()
            out[f"{name}-{rep}-loss"] = lo.loss.detach().numpy()
            out[f"{name}-{rep}-grad"] = _summary(torch.cat([p.grad.reshape(-1) for p in proc.parameters()
                                                             if p.grad is not None]))
    return out


def _trainer_values(tmp_path: Path) -> dict[str, np.ndarray]:
    from moldiff.data.arrays import MoleculeArrays
    from moldiff.data.loader import MolLoader
    from moldiff.training.trainer import Trainer

    rng = np.random.default_rng(0)
    mols = [(list(rng.choice(["H", "C", "N", "O"], size=3 + i % 4)), rng.normal(size=(3 + i % 4, 3)) * 1.2)
            for i in range(12)]
    arrays = MoleculeArrays.from_molecules(mols)
    cfg = ExperimentConfig.from_dict({
        "model": {"hidden_nf": 8, "n_layers": 2}, "diffusion": {"timesteps": 50},
        "train": {"lr": 1e-3, "batch_size": 4, "max_steps": 3, "eval_every_steps": 100, "n_eval_samples": 0,
                  "checkpoint_every_steps": 100, "ema_decay": 0.9}})
    torch.manual_seed(0)
    stats = {"elements": list(arrays.elements), "n_atoms_hist": {3: 3, 4: 3, 5: 3, 6: 3}, "max_n_atoms": 6}
    tr = Trainer(build_model(cfg, len(arrays.elements)), cfg, stats,
                 MolLoader(arrays, batch_size=4, seed=0).iter_batches, tmp_path, progress=False)
    tr.fit()
    weights = torch.cat([p.detach().reshape(-1).double() for p in tr.process.parameters()])
    return {"trainer-weights": _summary(weights)}


def test_ordinary_training_unchanged(tmp_path):
    values = {**_loss_values(), **_trainer_values(tmp_path)}
    ref = np.load(REF)
    assert sorted(ref.files) == sorted(values)
    for key, value in values.items():
        np.testing.assert_allclose(value, ref[key], rtol=1e-10, atol=1e-13, err_msg=key)


if __name__ == "__main__":  # regenerate the reference (see the module docstring)
    import moldiff

    np.savez(REF, **_loss_values(), **_trainer_values(Path(tempfile.mkdtemp())))
    print(f"wrote {REF} with the package at {Path(moldiff.__file__).parent}")
