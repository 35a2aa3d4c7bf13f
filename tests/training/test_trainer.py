import numpy as np
import pytest
import torch
import torch.distributed as dist

from moldiff.checkpoint import load_checkpoint, save_checkpoint
from moldiff.config import ExperimentConfig
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.loader import MolLoader
from moldiff.pipeline import build_process, from_checkpoint
from moldiff.training.trainer import GradClipper, Trainer, ema_update

CFG = ExperimentConfig.from_dict({
    "model": {"hidden_nf": 16, "n_layers": 2},
    "diffusion": {"timesteps": 50},
    "train": {"lr": 1e-3, "batch_size": 4, "epochs": 3, "eval_every_steps": 6, "n_eval_samples": 2,
              "eval_sample_steps": 5, "log_every_steps": 2, "checkpoint_every_steps": 2, "ema_decay": 0.9},
})


def _arrays(n=12, seed=0):
    rng = np.random.default_rng(seed)
    mols = []
    for i in range(n):
        k = 3 + i % 4
        mols.append((list(rng.choice(["H", "C", "N", "O"], size=k)), rng.normal(size=(k, 3)) * 1.2))
    return MoleculeArrays.from_molecules(mols)


def _trainer(tmp_path, cfg=CFG, arrays=None):
    arrays = arrays if arrays is not None else _arrays()
    torch.manual_seed(0)
    loader = MolLoader(arrays, batch_size=cfg.train.batch_size, seed=0)
    val = MolLoader(arrays, batch_size=6, shuffle=False)
    stats = {"elements": list(arrays.elements), "n_atoms_hist": {3: 3, 4: 3, 5: 3, 6: 3}, "max_n_atoms": 6}
    proc = build_process(cfg, len(arrays.elements))
    return Trainer(proc, cfg, stats, loader.iter_batches, tmp_path, val_batches=val.iter_batches, progress=False)


def test_grad_clipper_follows_edm_rule():
    clip = GradClipper()
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 10.0)  # norm 20
    norm, max_norm = clip([p])
    assert max_norm == pytest.approx(4500.0)  # 1.5 * 3000 + 2 * 0
    assert norm == pytest.approx(20.0)
    assert list(clip.queue) == [3000.0, 20.0]
    p.grad = torch.full((4,), 1e6)
    norm, max_norm = clip([p])
    assert float(p.grad.norm()) == pytest.approx(max_norm, rel=1e-4)  # clipped
    assert clip.queue[-1] == pytest.approx(max_norm)  # the clipped value is what is remembered


def test_ema_update():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight)


def test_fit_writes_log_plot_and_checkpoints(tmp_path):
    tr = _trainer(tmp_path)
    st = tr.fit()
    assert st.step == 9 and st.epoch == 3
    for name in ("last.pt", "best.pt", "log.csv", "loss.png", "config.yaml"):
        assert (tmp_path / name).is_file()
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss")
    payload = load_checkpoint(tmp_path / "last.pt")
    assert payload["state"]["step"] == 9
    model = from_checkpoint(tmp_path / "last.pt")
    assert len(model.sample_raw(2, steps=5, seed=0)) == 2


def test_resume_continues_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    cfg_short = CFG.override(train={"max_steps": 4})
    part = _trainer(tmp_path / "part", cfg_short)
    part.fit()
    resumed = _trainer(tmp_path / "part", CFG)
    resumed.resume()
    assert resumed.state.step == 4
    resumed.fit()
    for (n1, p1), (_, p2) in zip(full.process.state_dict().items(), resumed.process.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    for p1, p2 in zip(full.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_corrupt_or_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="misses"):
        save_checkpoint(tmp_path / "x.pt", {"config": {}})
    assert not (tmp_path / "x.pt").exists()


def _ddp_worker(rank, world, init_file, out_dir, resume_to, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        tr = _trainer(out_dir, CFG.override(train={"max_steps": resume_to or 3}))
        if resume_to:
            tr.resume()
        tr.fit()
        flat = torch.cat([p.detach().flatten() for p in tr.process.parameters()])
        queue.put((rank, flat.numpy()))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_gloo_stay_in_sync(tmp_path, spawn_ranks):
    results = spawn_ranks(_ddp_worker, 2, tmp_path / "init", tmp_path / "run", None)
    assert np.array_equal(results[0], results[1])  # gradients are all-reduced: replicas agree
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not any(".module." in k for k in payload["model"])  # the plain denoiser's keys, not DDP's
    assert from_checkpoint(tmp_path / "run" / "last.pt").sample_raw(1, steps=2)
    # a DDP run resumes from its own checkpoint (this failed when DDP's keys leaked into it)
    results = spawn_ranks(_ddp_worker, 2, tmp_path / "init2", tmp_path / "run", 5)
    assert np.array_equal(results[0], results[1])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["step"] == 5


def test_export_checkpoint_is_small_and_samples(tmp_path):
    from moldiff.checkpoint import export_checkpoint

    tr = _trainer(tmp_path / "run", CFG.override(train={"max_steps": 2}))
    tr.fit()
    out = export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "ship.pt", {"note": "x"})
    assert "optimizer" not in out and out["info"]["train_state"]["step"] == 2 and out["info"]["note"] == "x"
    assert (tmp_path / "ship.pt").stat().st_size < (tmp_path / "run" / "last.pt").stat().st_size
    assert len(from_checkpoint(tmp_path / "ship.pt").sample_raw(1, steps=3)) == 1


@pytest.mark.slow  # inductor compiles the denoiser with the system C compiler (~20-60 s on 2 cores)
def test_compiled_training_matches_eager_and_keeps_checkpoint_keys(tmp_path):
    cfg = CFG.override(train={"max_steps": 2, "eval_every_steps": 1000})
    eager = _trainer(tmp_path / "eager", cfg)
    eager.fit()
    compiled = _trainer(tmp_path / "compiled", cfg.override(train={"compile": True}))
    compiled.fit()
    a, b = eager.process.state_dict(), compiled.process.state_dict()
    assert a.keys() == b.keys()  # compiled in place: checkpoints stay loadable by eager models
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert from_checkpoint(tmp_path / "compiled" / "last.pt").sample_raw(1, steps=2)


def test_ema_warmup_forgets_the_initial_weights():
    import torch

    from moldiff.training.trainer import ema_decay_at, ema_update

    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(100.0)
        model.weight.fill_(1.0)
    for step in range(200):
        ema_update(ema, model, ema_decay_at(0.999, step, warmup=True))
    assert abs(float(ema.weight.detach()) - 1.0) < 1e-3
    assert [ema_decay_at(0.999, s, False) for s in (0, 10)] == [0.999, 0.999]


@pytest.mark.parametrize("augment", [False, True])
def test_augment_rotations_rotates_each_training_molecule(tmp_path, augment):
    """train.augment_rotations: the loss sees every molecule rigidly rotated (distances kept), else as loaded."""
    cfg = CFG.override(train={"augment_rotations": augment, "max_steps": 2, "eval_every_steps": 100})
    tr = _trainer(tmp_path, cfg)
    seen, loaded = [], []
    loss = tr.train_process.loss

    def spy(mb, *args, **kwargs):
        seen.append(mb.pos.detach().clone())
        return loss(mb, *args, **kwargs)

    tr.train_process.loss = spy
    batches = tr.train_batches

    def record(epoch, start=0):
        for mb in batches(epoch, start):
            loaded.append(mb.pos.clone())
            yield mb

    tr.train_batches = record
    mol = {}

    def keep_batch(epoch, start=0):
        for mb in record(epoch, start):
            mol.setdefault("batch", mb.batch.clone())
            yield mb

    tr.train_batches = keep_batch
    tr.fit()
    a, b, same = seen[0], loaded[0], mol["batch"][:, None] == mol["batch"][None, :]
    torch.testing.assert_close(torch.cdist(a, a)[same], torch.cdist(b, b)[same], rtol=0, atol=1e-5)  # rigid
    assert torch.allclose(a, b) != augment


def test_lr_schedules_decay_to_lr_min_over_the_last_steps():
    from moldiff.config import TrainConfig
    from moldiff.training.trainer import lr_at

    const = TrainConfig(lr=2e-3, max_steps=10)
    assert [lr_at(const, s) for s in (0, 5, 10)] == [2e-3] * 3
    lin = TrainConfig(lr=1.0, lr_min=0.2, lr_schedule="linear", max_steps=10)  # decays over all 10 steps
    assert [lr_at(lin, s) for s in (0, 5, 10, 12)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    cos = TrainConfig(lr=1.0, lr_schedule="cosine", max_steps=20, lr_decay_steps=10)  # constant, then cosine
    assert [lr_at(cos, s) for s in (0, 10, 15, 20)] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step", max_steps=3)
    with pytest.raises(ValueError, match="lr_min"):
        TrainConfig(lr=1e-4, lr_min=1e-3)


def test_fit_applies_the_schedule_and_a_resumed_run_follows_it(tmp_path):
    d = CFG.to_dict()
    d["train"].update(max_steps=6, lr_schedule="linear", lr_min=1e-4)
    cfg = ExperimentConfig.from_dict(d)
    tr = _trainer(tmp_path / "a", cfg)
    tr.fit()
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(1e-3 - 5 / 6 * (1e-3 - 1e-4))  # the lr of step 5 (0-based)
    full = {k: v.clone() for k, v in tr.process.state_dict().items()}
    # the same run, stopped after one epoch (3 steps) and resumed: bit-identical weights
    d["train"]["epochs"] = 1
    part = _trainer(tmp_path / "b", ExperimentConfig.from_dict(d))
    assert part.fit().step == 3
    d["train"]["epochs"] = CFG.train.epochs
    resumed = _trainer(tmp_path / "b", ExperimentConfig.from_dict(d))
    resumed.resume()
    resumed.fit()
    for k, v in resumed.process.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_init_grows_an_unconditional_checkpoint_into_a_conditional_model(tmp_path):
    """`--init` from an unconditional run: the context weights start at zero, so the conditional
    denoiser computes exactly the unconditional one for any context, and the run then trains."""
    src = _trainer(tmp_path / "uncond")
    src.fit()
    d = CFG.to_dict()
    d["train"].update(context_dropout=0.2, max_steps=2)
    cfg = ExperimentConfig.from_dict(d)
    arrays = _arrays()
    stats = {"elements": list(arrays.elements), "n_atoms_hist": {3: 3, 4: 3, 5: 3, 6: 3}, "max_n_atoms": 6,
             "context_nf": 1, "conditioning": ["alpha"]}
    proc = build_process(cfg, len(arrays.elements), context_nf=1)  # 2 channels, [c * keep, keep], with dropout
    loader = MolLoader(arrays, batch_size=4, seed=0)
    tr = Trainer(proc, cfg, stats, loader.iter_batches, tmp_path / "cond", progress=False)
    grown = tr.init_from(tmp_path / "uncond" / "last.pt")
    assert grown  # the first and last layers were padded with zero context weights
    g = torch.Generator().manual_seed(3)
    pos, h = torch.randn(7, 3, generator=g), torch.randn(7, src.process.denoiser.in_node_nf, generator=g)
    batch, t = torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.rand(2, 1, generator=g)
    with torch.no_grad():
        ref = src.ema.denoiser(pos, h, t, batch)
        for ctx in (torch.zeros(2, 2), torch.randn(2, 2, generator=g)):  # any value and keep flag
            out = tr.ema.denoiser(pos, h, t, batch, context=ctx)
            for a, b in zip(ref, out, strict=True):
                assert torch.allclose(a, b, atol=1e-6)
    # a checkpoint of another architecture is still refused with one line
    d2 = CFG.to_dict()
    d2["model"]["hidden_nf"] = 8
    other = _trainer(tmp_path / "other", ExperimentConfig.from_dict(d2))
    with pytest.raises(ValueError, match="does not fit"):
        other.init_from(tmp_path / "uncond" / "last.pt")
