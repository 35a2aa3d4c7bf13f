"""Batched, sharded and out-of-memory-safe sampling (moldiff/sampling/sampler.py: iter_batches & co)."""

from __future__ import annotations

import pytest
import torch

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.sampling.sampler import (
    DEFAULT_MAX_ATOMS_PER_BATCH,
    Sampler,
    auto_batch_budget,
    batch_seed,
    concat_outputs,
    plan_batches,
)

COUNTS = [4, 9, 3, 7, 5, 6, 2, 8]


def _process() -> EquivariantDiffusion:
    torch.manual_seed(0)
    return EquivariantDiffusion(EGNNDenoiser(6, hidden_nf=16, n_layers=2), NoiseSchedule("polynomial_2", 20), 5).eval()


def test_plan_batches_molecule_cap() -> None:
    plan = plan_batches(COUNTS, max_atoms_per_batch=1000, max_graphs_per_batch=3)
    assert [sl.stop - sl.start for sl in plan] == [3, 3, 2]
    with pytest.raises(ValueError, match="max_graphs_per_batch"):
        plan_batches(COUNTS, max_graphs_per_batch=0)


def test_auto_budget_on_cpu_is_the_default() -> None:
    assert auto_batch_budget(_process(), "cpu") == (DEFAULT_MAX_ATOMS_PER_BATCH, None)


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_reassemble_to_the_single_process_result(world_size: int) -> None:
    sampler = Sampler(_process())
    kw = dict(max_atoms_per_batch=12, seed=5, steps=4)
    single = [(k, out) for k, _, out in sampler.iter_batches(COUNTS, **kw)]
    shards = [list(sampler.iter_batches(COUNTS, rank=r, world_size=world_size, **kw)) for r in range(world_size)]
    assert all(k % world_size == r for r, shard in enumerate(shards) for k, _, _ in shard)
    merged = sorted(((k, out) for shard in shards for k, _, out in shard), key=lambda x: x[0])
    assert [k for k, _ in merged] == [k for k, _ in single]
    for (_, a), (_, b) in zip(merged, single, strict=True):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.types, b.types)
    with pytest.raises(ValueError, match="rank"):
        next(sampler.iter_batches(COUNTS, rank=2, world_size=2))


def test_out_of_memory_splits_the_batch_and_keeps_order(monkeypatch) -> None:
    sampler = Sampler(_process())
    plain = Sampler.sample
    limit = 10  # pretend anything above 10 atoms does not fit on the device
    sizes = []

    def sample(self, num_atoms, **kwargs):
        sizes.append(int(torch.as_tensor(num_atoms).sum()))
        if sizes[-1] > limit and len(num_atoms) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return plain(self, num_atoms, **kwargs)

    monkeypatch.setattr(Sampler, "sample", sample)
    with pytest.warns(UserWarning, match="out of memory"):
        out = sampler.sample_batched(COUNTS, max_atoms_per_batch=20, seed=1, steps=3)
    assert [len(t) for t, _ in out.split()] == COUNTS
    # after the first failure, later big batches are pre-split instead of failing again
    assert sum(s > limit and s != max(COUNTS) for s in sizes) == 1
    # a split half uses the derived seed 2 s + 1 of its batch seed s
    first = plain(sampler, COUNTS[:1], seed=2 * batch_seed(1, 0) + 1, steps=3)
    assert torch.equal(out.pos[: COUNTS[0]], first.pos)


def test_out_of_memory_on_a_single_molecule_is_raised(monkeypatch) -> None:
    def sample(self, num_atoms, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Sampler, "sample", sample)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(UserWarning):
        Sampler(_process()).sample_batched([5, 5], max_atoms_per_batch=20, steps=2)


def test_per_batch_eps_fn_sees_its_slice() -> None:
    proc, seen = _process(), []

    def eps_fn_for(sl: slice):
        seen.append(sl)
        return None  # fall back to the network

    Sampler(proc).sample_batched(COUNTS, max_atoms_per_batch=15, steps=2, eps_fn_for=eps_fn_for)
    assert seen == plan_batches(COUNTS, 15)


def test_concat_outputs_offsets_batches() -> None:
    sampler = Sampler(_process())
    a, b = sampler.sample([3, 2], steps=2), sampler.sample([4], steps=2)
    both = concat_outputs([a, b])
    assert both.num_graphs == 3 and both.batch.tolist() == [0] * 3 + [1] * 2 + [2] * 4
