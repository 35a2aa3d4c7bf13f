"""End-to-end overfit: train on one real QM9 molecule on the CPU, sample, compare geometry.

The model is E(3)- and permutation-equivariant, so it learns the orbit of the molecule (all
rotations and atom orderings), not one frame: we compare rotation- and permutation-invariant
sorted interatomic distances. After ~40 s of training on ammonia (QM9 row 1) most samples match
the training geometry within 0.1 Å; we assert the median sample does and that every sample has
the right composition.

Marked ``slow`` (about 40 s on one CPU thread): deselected by ``make test`` / plain ``pytest``, run by
``make test-all`` or ``pytest -m slow tests/test_overfit.py``.
"""

import copy

import numpy as np
import pytest
import torch

from moldiff.config import ExperimentConfig
from moldiff.data.datasets import load_dataset
from moldiff.data.loader import MolLoader
from moldiff.pipeline import build_process
from moldiff.sampling.sampler import Sampler
from moldiff.training.trainer import ema_update


@pytest.mark.slow
def test_overfit_one_qm9_molecule():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        qm9 = load_dataset("qm9")
        row = 1  # ammonia, GDB index 2
        symbols, _ = qm9.molecule(row)
        assert sorted(symbols) == ["H", "H", "H", "N"]
        batch = MolLoader(qm9, [row] * 16, batch_size=16, shuffle=False).collate(np.array([row] * 16))
        cfg = ExperimentConfig.from_dict({"model": {"n_layers": 4, "hidden_nf": 64}, "diffusion": {"timesteps": 100}})
        proc = build_process(cfg, len(qm9.elements))
        ema = copy.deepcopy(proc)
        opt = torch.optim.AdamW(proc.parameters(), lr=2e-3, amsgrad=True)
        proc.train()
        for _ in range(3000):
            loss = proc.loss(batch).loss.mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(proc.parameters(), 10.0)
            opt.step()
            ema_update(ema, proc, 0.995)
        ema.eval()
        out = Sampler(ema).sample([4] * 8, steps=100, seed=1)
        ref = torch.pdist(batch.pos[:4].double()).sort().values
        errors = []
        for types, pos in out.split():
            assert sorted(qm9.elements[i] for i in types.tolist()) == ["H", "H", "H", "N"]
            errors.append(float((torch.pdist(pos.double()).sort().values - ref).abs().max()))
        assert np.median(errors) < 0.1, errors
    finally:
        torch.set_num_threads(threads)
