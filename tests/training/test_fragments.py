"""moldiff.training.fragments (training masks) and the trainer's fragment training / grow-init."""

import numpy as np
import pytest
import torch

from moldiff.config import ExperimentConfig
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.loader import MolLoader
from moldiff.pipeline import build_process
from moldiff.training.fragments import BOND_CUTOFF, fragment_mask
from moldiff.training.trainer import Trainer


def _molecules():
    """Three molecules: a 6-ring with one H per carbon, a 5-chain with 2 H on each end, a 2-atom + 2 H."""
    pos, heavy, batch = [], [], []
    ring = [(1.4 * np.cos(a), 1.4 * np.sin(a), 0.0) for a in np.arange(6) * np.pi / 3]
    ring_h = [(2.5 * np.cos(a), 2.5 * np.sin(a), 0.0) for a in np.arange(6) * np.pi / 3]
    chain = [(1.5 * i, 0.3 * (i % 2), 0.0) for i in range(5)]
    chain_h = [(-0.7, 0.7, 0.5), (-0.7, -0.7, 0.5), (6.7, 0.7, 0.5), (6.7, -0.7, 0.5)]
    pair = [(0.0, 0.0, 0.0), (1.2, 0.0, 0.0)]
    pair_h = [(-1.0, 0.2, 0.0), (2.2, 0.2, 0.0)]
    for b, (hv, hs) in enumerate([(ring, ring_h), (chain, chain_h), (pair, pair_h)]):
        pos += hv + hs
        heavy += [True] * len(hv) + [False] * len(hs)
        batch += [b] * (len(hv) + len(hs))
    return (torch.tensor(pos, dtype=torch.float64), torch.tensor(heavy), torch.tensor(batch))


def _connected(atoms: list[int], pos: torch.Tensor) -> bool:
    seen, todo = {atoms[0]}, [atoms[0]]
    while todo:
        i = todo.pop()
        for j in atoms:
            if j not in seen and float((pos[i] - pos[j]).norm()) < BOND_CUTOFF:
                seen.add(j)
                todo.append(j)
    return len(seen) == len(atoms)


@pytest.mark.parametrize("free_range", [(1, 1), (1, 4), (2, 3), (5, 9)])
def test_free_atoms_are_a_connected_heavy_group_with_their_hydrogens(free_range):
    pos, heavy, batch = _molecules()
    sizes = set()
    for seed in range(30):
        fixed = fragment_mask(pos, heavy, batch, 3, 1.0, free_range, torch.Generator().manual_seed(seed))
        for b in range(3):
            atoms = (batch == b).nonzero().flatten()
            hv, hs = atoms[heavy[atoms]], atoms[~heavy[atoms]]
            free_heavy = hv[~fixed[hv]].tolist()
            k = len(free_heavy)
            lo, hi = free_range
            top = min(hi, len(hv) - 1)
            assert min(lo, top) <= k <= top  # the requested size, at most n_heavy - 1
            sizes.add((b, k))
            assert _connected(free_heavy, pos)
            nearest = hv[torch.cdist(pos[hs], pos[hv]).argmin(1)]
            assert torch.equal(fixed[hs], fixed[nearest])  # each H goes with its heavy atom
    if free_range == (1, 4):
        assert {k for b, k in sizes if b == 0} == {1, 2, 3, 4}  # every size is drawn


def test_mask_reproducible_and_probability():
    pos, heavy, batch = _molecules()
    a = fragment_mask(pos, heavy, batch, 3, 0.5, (1, 4), torch.Generator().manual_seed(3))
    b = fragment_mask(pos, heavy, batch, 3, 0.5, (1, 4), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    masks = [fragment_mask(pos, heavy, batch, 3, 0.5, (1, 4), torch.Generator().manual_seed(s)) for s in range(40)]
    assert len({tuple(m.tolist()) for m in masks}) > 10
    drawn = np.mean([[bool(m[batch == b].any()) for b in range(3)] for m in masks])
    assert 0.3 < drawn < 0.7
    assert not fragment_mask(pos, heavy, batch, 3, 0.0, (1, 4), torch.Generator()).any()


def test_mask_follows_the_batch_bonds_when_given():
    """A 4-atom 'molecule' whose bonds (0-3, 3-1, 1-2) are not the distance graph: the group follows the bonds."""
    pos = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [20.0, 0, 0], [30.0, 0, 0]], dtype=torch.float64)
    heavy, batch = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long)
    bonds = torch.tensor([[0, 1, 1], [3, 3, 2]])
    for seed in range(20):
        fixed = fragment_mask(pos, heavy, batch, 1, 1.0, (2, 2), torch.Generator().manual_seed(seed), bond_index=bonds)
        free = sorted((~fixed).nonzero().flatten().tolist())
        assert free in ([0, 3], [1, 3], [1, 2])
    # without bonds nothing is connected (10 Å apart): one free atom
    fixed = fragment_mask(pos, heavy, batch, 1, 1.0, (2, 2), torch.Generator().manual_seed(0))
    assert int((~fixed).sum()) == 1


def test_every_qm9_heavy_bond_is_within_the_cutoff():
    """The distance graph (no bonds in the batch) holds every bond of the package's QM9-like fixture molecules."""
    from pathlib import Path

    from moldiff.io import read_molecules

    for rec in read_molecules(Path(__file__).resolve().parents[1] / "fixtures" / "small_mols.sdf"):
        if rec.bonds is None:
            continue
        for i, j, _ in rec.bonds:
            if rec.symbols[i] != "H" and rec.symbols[j] != "H":
                assert np.linalg.norm(rec.pos[i] - rec.pos[j]) < BOND_CUTOFF


# ------------------------------------------------------------------------------------------ the trainer
def _arrays(n=12, seed=0):
    rng = np.random.default_rng(seed)
    mols = []
    for i in range(n):  # a chain of 3-5 heavy atoms 1.5 Å apart with one H each
        k = 3 + i % 3
        heavy = np.stack([np.arange(k) * 1.5, np.zeros(k), np.zeros(k)], 1) + rng.normal(size=(k, 3)) * 0.05
        hyd = heavy + np.array([0.0, 1.0, 0.0])
        mols.append((list(rng.choice(["C", "N", "O"], size=k)) + ["H"] * k, np.concatenate([heavy, hyd])))
    return MoleculeArrays.from_molecules(mols)


def _cfg(**train):
    return ExperimentConfig.from_dict({
        "model": {"hidden_nf": 16, "n_layers": 2, "fragment_input": True},
        "diffusion": {"timesteps": 50},
        "train": {"lr": 1e-3, "batch_size": 4, "epochs": 3, "eval_every_steps": 100, "n_eval_samples": 0,
                  "log_every_steps": 2, "checkpoint_every_steps": 2, "ema_decay": 0.9, "max_steps": 6,
                  "fragment_prob": 0.7, "fragment_free": [1, 2], **train}})


def _trainer(out, cfg):
    arrays = _arrays()
    torch.manual_seed(0)
    stats = {"elements": list(arrays.elements), "n_atoms_hist": {6: 4, 8: 4, 10: 4}, "max_n_atoms": 10}
    return Trainer(build_process(cfg, len(arrays.elements)), cfg, stats,
                   MolLoader(arrays, batch_size=4, seed=0).iter_batches, out, progress=False)


def test_fragment_training_masks_reach_the_loss_and_resume_exactly(tmp_path, monkeypatch):
    seen = []
    tr = _trainer(tmp_path / "full", _cfg())
    loss = tr.train_process.loss

    def spy(mb, **kw):
        seen.append((mb, kw["fixed"]))
        return loss(mb, **kw)

    monkeypatch.setattr(tr.train_process, "loss", spy)
    tr.fit()
    assert len(seen) == 6
    h = list(tr.stats.elements).index("H")
    for mb, fixed in seen:
        assert fixed is not None and fixed.shape == (mb.pos.shape[0],)
        for b in range(mb.num_graphs):
            m = mb.batch == b
            heavy_free = int((~fixed[m] & (mb.one_hot[m].argmax(1) != h)).sum())
            assert heavy_free in (1, 2) or not fixed[m].any()  # drawn: 1-2 free heavy atoms; else nothing fixed
    drawn = [bool(f[mb.batch == b].any()) for mb, f in seen for b in range(mb.num_graphs)]
    assert any(drawn) and not all(drawn)
    full = {k: v.clone() for k, v in tr.process.state_dict().items()}
    part = _trainer(tmp_path / "part", _cfg(max_steps=3))
    part.fit()
    resumed = _trainer(tmp_path / "part", _cfg())
    resumed.resume()
    resumed.fit()
    for k, v in resumed.process.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_init_grows_a_checkpoint_without_the_flag_into_a_fragment_model(tmp_path):
    """`--init` from a model without `fragment_input`: the flag's weights start at zero, so the grown
    denoiser computes exactly the source for any flag; then it trains."""
    d = _cfg().to_dict()
    d["model"]["fragment_input"], d["train"]["fragment_prob"] = False, 0.0
    src = _trainer(tmp_path / "src", ExperimentConfig.from_dict(d))
    src.fit()
    tr = _trainer(tmp_path / "frag", _cfg())
    grown = tr.init_from(tmp_path / "src" / "last.pt")
    # one new input column, and the output row of the flag channel (sliced off)
    assert grown == ["denoiser.egnn.embedding.weight", "denoiser.egnn.embedding_out.weight",
                     "denoiser.egnn.embedding_out.bias"]
    g = torch.Generator().manual_seed(3)
    pos, h = torch.randn(7, 3, generator=g), torch.randn(7, src.process.denoiser.in_node_nf, generator=g)
    batch, t = torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.rand(2, generator=g)
    with torch.no_grad():
        for a, b in ((src.ema, tr.ema), (src.process, tr.process)):
            ref = a.denoiser(pos, h, t, batch)
            for fixed in (None, torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool), torch.ones(7, dtype=torch.bool)):
                out = b.denoiser(pos, h, t, batch, fixed=fixed)
                for x, y in zip(ref, out, strict=True):
                    assert torch.equal(x, y)
    tr.fit()
    assert tr.state.step == 6
    assert float(tr.process.denoiser.egnn.embedding.weight[:, -1].detach().abs().sum()) > 0  # the flag is learnt
    # the reverse (a fragment checkpoint into a model without the flag) is refused with one line
    back = _trainer(tmp_path / "back", ExperimentConfig.from_dict(d))
    with pytest.raises(ValueError, match="does not fit"):
        back.init_from(tmp_path / "frag" / "last.pt")
    # and the existing context rule still holds for checkpoints written before `fragment_input` existed
    payload = torch.load(tmp_path / "src" / "last.pt", weights_only=True)
    del payload["config"]["model"]["fragment_input"]
    torch.save(payload, tmp_path / "old.pt")
    again = _trainer(tmp_path / "again", _cfg())
    assert again.init_from(tmp_path / "old.pt") == grown


def _fragment_branch(frag_yaml: str, source_yaml: str) -> dict:
    """Load a fragment-branch config and its source from ``benchmarks/configs``; assert the branch is
    the source's model, process and data plus the fixed-atom flag, and return the branch as a dict."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"
    frag = ExperimentConfig.load_yaml(root / frag_yaml).to_dict()
    source = ExperimentConfig.load_yaml(root / source_yaml).to_dict()
    assert frag["model"].pop("fragment_input") is True and source["model"].pop("fragment_input") is False
    assert frag["model"] == source["model"] and frag["diffusion"] == source["diffusion"]
    assert frag["data"] == source["data"]
    return frag


def test_qm9_frag_config_is_qm9_v2_plus_the_flag():
    t = _fragment_branch("qm9_frag.yaml", "qm9_v2.yaml")["train"]
    assert (t["fragment_prob"], t["fragment_free"], t["lr"], t["lr_schedule"], t["lr_decay_steps"], t["max_steps"]) \
        == (0.5, [1, 4], 3e-4, "linear", 2000, 10000)
    assert (t["ema_warmup"], t["ema_decay"], t["compile"], t["num_threads"], t["checkpoint_every_steps"]) \
        == (False, 0.999, True, 1, 250)
    assert (t["eval_every_steps"], t["n_eval_samples"], t["val_molecules"]) == (1000000, 0, 500)


def test_drugs_frag_config_is_the_drugs_model_plus_the_flag():
    frag = _fragment_branch("drugs_frag.yaml", "drugs.yaml")
    assert frag["diffusion"]["bonds"] == "categorical"
    t = frag["train"]
    assert (t["fragment_prob"], t["fragment_free"], t["lr_schedule"], t["lr_decay_steps"], t["max_steps"]) \
        == (0.5, [2, 8], "linear", 2000, 4000)
    assert (t["ema_warmup"], t["checkpoint_every_steps"]) == (False, 250)
