"""Noise-to-data alignment in training (``train.align_noise``; moldiff/geometry.py, the process, the trainer)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moldiff.config import NOISE_ALIGNMENTS as CONFIG_ALIGNMENTS
from moldiff.config import ExperimentConfig
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import (
    NOISE_ALIGNMENTS,
    align_noise,
    align_permutation,
    align_rotation,
    kabsch_rotations,
    noise_aligner,
    random_rotation,
    remove_mean,
    sample_zero_com_gaussian,
)
from moldiff.nn.denoiser import EGNNDenoiser

SIZES = (4, 7, 11)  # three molecules of different sizes
MODES = ("rotation", "permutation", "both")
TOL = 1e-10


def toy(sizes=SIZES, seed=0, scale=1.5):
    """``(eps, x, batch, B)`` in float64: zero-CoM Gaussian noise and zero-CoM data."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = remove_mean(scale * torch.randn(batch.shape[0], 3, generator=gen, dtype=torch.float64), batch)
    eps = sample_zero_com_gaussian(batch, len(sizes), gen, torch.float64)
    return eps, x, batch, len(sizes)


def per_mol(values, batch, num_graphs):
    return torch.zeros(num_graphs, dtype=values.dtype).index_add_(0, batch, values)


def sq_dist(a, b, batch, num_graphs):
    return per_mol(((a - b) ** 2).sum(1), batch, num_graphs)


def rotations(num_graphs, seed, reflect=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([random_rotation(torch.float64, gen, reflect=reflect) for _ in range(num_graphs)])


def rotate(pos, rots, batch):
    return torch.einsum("nij,nj->ni", rots[batch], pos)


def block_permutation(batch, seed):
    """A random permutation of atom indices that keeps every atom inside its molecule."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(batch.shape[0])
    for b in batch.unique():
        idx = (batch == b).nonzero().flatten()
        perm[idx] = idx[torch.randperm(len(idx), generator=gen)]
    return perm


# ---------------------------------------------------------------------------- names and config
def test_config_names_match_geometry():
    assert tuple(NOISE_ALIGNMENTS) == CONFIG_ALIGNMENTS


def test_config_default_validation_and_round_trip(tmp_path):
    assert ExperimentConfig().train.align_noise == "none"
    with pytest.raises(ValueError, match="train.align_noise"):
        ExperimentConfig.from_dict({"train": {"align_noise": "ot"}})
    for mode in NOISE_ALIGNMENTS:
        cfg = ExperimentConfig.from_dict({"train": {"align_noise": mode}})
        cfg.save_yaml(tmp_path / "c.yaml")
        assert ExperimentConfig.load_yaml(tmp_path / "c.yaml").train.align_noise == mode
    with pytest.raises(ValueError, match="align_noise"):
        noise_aligner("ot")
    assert noise_aligner("none") is None


def test_speedrun_overrides_reach_the_config():
    from script_loader import load_script

    mod = load_script("benchmarks/quality/speedrun.py", "_speedrun_for_align_test")
    cfg = mod.apply_overrides(ExperimentConfig(), ["train.align_noise=both"])
    assert cfg.train.align_noise == "both"
    with pytest.raises(ValueError, match="align_noise"):
        mod.apply_overrides(ExperimentConfig(), ["train.align_noise=sideways"])


# ---------------------------------------------------------------------------- exactness on toy inputs
def test_rotated_data_is_rotated_back_exactly():
    _, x, batch, B = toy()
    eps = rotate(x, rotations(B, 1), batch)  # the noise is an exact rotation of the data
    assert sq_dist(eps, x, batch, B).min() > 1.0
    for mode in ("rotation", "both"):
        torch.testing.assert_close(align_noise(eps, x, batch, B, mode), x, atol=TOL, rtol=0)


def test_permuted_data_is_permuted_back_exactly():
    _, x, batch, B = toy()
    eps = x[block_permutation(batch, 2)]
    assert sq_dist(eps, x, batch, B).min() > 1.0
    assert torch.equal(align_permutation(eps, x, batch, B), x)
    assert torch.equal(align_noise(eps, x, batch, B, "permutation"), x)


@pytest.mark.parametrize("mode", MODES)
def test_aligned_distance_never_larger(mode):
    for seed in range(20):
        eps, x, batch, B = toy(seed=seed)
        before = sq_dist(eps, x, batch, B)
        after = sq_dist(align_noise(eps, x, batch, B, mode), x, batch, B)
        assert bool((after <= before + 1e-12).all()), (seed, before, after)
        assert float(after.sum()) < float(before.sum())  # (a small molecule's noise may already be optimal)


def test_kabsch_beats_random_rotations():
    eps, x, batch, B = toy(seed=3)
    best = sq_dist(align_rotation(eps, x, batch, B), x, batch, B)
    for seed in range(200):
        other = sq_dist(rotate(eps, rotations(B, 100 + seed), batch), x, batch, B)
        assert bool((best <= other + 1e-12).all())


def test_rotation_is_proper_and_keeps_norm_and_com():
    for seed in range(10):
        eps, x, batch, B = toy(seed=seed)
        rots = kabsch_rotations(eps, x, batch, B)
        eye = torch.eye(3, dtype=torch.float64).expand(B, 3, 3)
        torch.testing.assert_close(rots.transpose(1, 2) @ rots, eye, atol=TOL, rtol=0)
        torch.testing.assert_close(torch.det(rots), torch.ones(B, dtype=torch.float64), atol=TOL, rtol=0)
        out = align_rotation(eps, x, batch, B)
        torch.testing.assert_close(out, rotate(eps, rots, batch), atol=0, rtol=0)
        # the map eps -> out, recovered by least squares, is that proper rotation
        for b in range(B):
            m = batch == b
            sol = torch.linalg.lstsq(eps[m], out[m]).solution.T
            torch.testing.assert_close(sol, rots[b], atol=1e-9, rtol=0)
        torch.testing.assert_close(per_mol(out.pow(2).sum(1), batch, B), per_mol(eps.pow(2).sum(1), batch, B),
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(remove_mean(out, batch, B), out, atol=TOL, rtol=0)


def test_reflected_data_still_gets_a_proper_rotation():
    """A noise that is a mirror image of the data cannot be rotated onto it: det stays +1 (reflection fix)."""
    _, x, batch, B = toy(seed=4)
    eps = rotate(x, rotations(B, 5, reflect=True), batch)
    rots = kabsch_rotations(eps, x, batch, B)
    torch.testing.assert_close(torch.det(rots), torch.ones(B, dtype=torch.float64), atol=TOL, rtol=0)
    assert sq_dist(align_rotation(eps, x, batch, B), x, batch, B).min() > 1e-3


def test_permutation_only_reorders_rows_within_each_molecule():
    for seed in range(10):
        eps, x, batch, B = toy(seed=seed)
        out = align_permutation(eps, x, batch, B)
        # every output row is exactly one row of the noise, of the same molecule, each used once
        match = (out.unsqueeze(1) == eps.unsqueeze(0)).all(-1)  # [N, N]
        assert bool((match.sum(1) == 1).all())
        src = match.float().argmax(1)
        assert sorted(src.tolist()) == list(range(len(batch)))
        assert torch.equal(batch[src], batch)
        torch.testing.assert_close(remove_mean(out, batch, B), out, atol=TOL, rtol=0)


def test_both_is_rotation_then_permutation():
    eps, x, batch, B = toy(seed=6)
    rotated = align_rotation(eps, x, batch, B)
    assert torch.equal(align_noise(eps, x, batch, B, "both"), align_permutation(rotated, x, batch, B))
    assert torch.equal(align_noise(eps, x, batch, B, "none"), eps)


# ---------------------------------------------------------------------------- equivariance (float64)
@pytest.mark.parametrize("mode", ["rotation", "both"])
def test_rotating_and_translating_the_data_rotates_the_aligned_noise(mode):
    """The noise fixed, the molecule moved: the aligned noise follows it (``permutation`` alone rotates nothing)."""
    eps, x, batch, B = toy(seed=7)
    rots = rotations(B, 8)
    shift = torch.randn(B, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = align_noise(eps, x, batch, B, mode)
    moved = align_noise(eps, rotate(x, rots, batch) + shift[batch], batch, B, mode)
    torch.testing.assert_close(moved, rotate(out, rots, batch), atol=TOL, rtol=0)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
@pytest.mark.parametrize("mode", MODES)
def test_transforming_data_and_noise_together_transforms_the_aligned_noise(mode, reflect):
    """E(3): any orthogonal map (reflections too) of molecule and noise, plus a translation of the molecule."""
    eps, x, batch, B = toy(seed=10)
    q = rotations(B, 11, reflect=reflect)
    shift = torch.randn(B, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    out = align_noise(eps, x, batch, B, mode)
    moved = align_noise(rotate(eps, q, batch), rotate(x, q, batch) + shift[batch], batch, B, mode)
    torch.testing.assert_close(moved, rotate(out, q, batch), atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["rotation", "both"])
def test_rotating_the_noise_does_not_change_the_rotation_alignment(mode):
    eps, x, batch, B = toy(seed=13)
    out = align_noise(eps, x, batch, B, mode)
    torch.testing.assert_close(align_noise(rotate(eps, rotations(B, 14), batch), x, batch, B, mode), out,
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_permuting_atoms_and_noise_together_permutes_the_aligned_noise(mode):
    eps, x, batch, B = toy(seed=15)
    perm = block_permutation(batch, 16)
    out = align_noise(eps, x, batch, B, mode)
    torch.testing.assert_close(align_noise(eps[perm], x[perm], batch, B, mode), out[perm], atol=TOL, rtol=0)


def test_permutation_follows_a_renumbering_of_the_atoms_alone():
    """The assignment depends on the atoms, not their order, nor the order of the noise rows."""
    eps, x, batch, B = toy(seed=17)
    perm = block_permutation(batch, 18)
    out = align_permutation(eps, x, batch, B)
    assert torch.equal(align_permutation(eps, x[perm], batch, B), out[perm])
    shift = torch.randn(B, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.equal(align_permutation(eps, x + shift[batch], batch, B), out)  # translation: a constant cost
    assert torch.equal(align_permutation(eps[block_permutation(batch, 19)], x, batch, B), out)


# ---------------------------------------------------------------------------- molecules are independent
@pytest.mark.parametrize("mode", MODES)
def test_each_molecule_is_aligned_on_its_own(mode):
    eps, x, batch, B = toy(seed=20)
    out = align_noise(eps, x, batch, B, mode)
    for b in range(B):
        m = batch == b
        alone = align_noise(eps[m], x[m], torch.zeros(int(m.sum()), dtype=torch.long), 1, mode)
        torch.testing.assert_close(out[m], alone, atol=1e-12, rtol=0)
    # changing molecule 1 leaves the others' aligned noise exactly as it was
    x2 = x.clone()
    x2[batch == 1] = torch.flip(x2[batch == 1], [0]) * 2.0
    out2 = align_noise(eps, x2, batch, B, mode)
    keep = batch != 1
    assert torch.equal(out2[keep], out[keep])
    assert not torch.allclose(out2[~keep], out[~keep])


def test_single_atom_molecule_and_dtype_device_kept():
    eps, x, batch, B = toy(sizes=(1, 5), seed=21)
    for mode in MODES:
        out = align_noise(eps.float(), x.float(), batch, B, mode)
        assert out.dtype == torch.float32 and out.shape == eps.shape and bool(torch.isfinite(out).all())
        torch.testing.assert_close(out[:1], torch.zeros(1, 3))


# ---------------------------------------------------------------------------- the loss and a training step
def gaussian_process():
    torch.manual_seed(0)
    net = EGNNDenoiser(6, hidden_nf=16, n_layers=1)
    return EquivariantDiffusion(net, NoiseSchedule("polynomial_2", 1000), 5, include_charges=True)


def categorical_process():
    torch.manual_seed(0)
    schedule = NoiseSchedule("polynomial_2", 1000)
    net = EGNNDenoiser(5, hidden_nf=16, n_layers=1)
    return EquivariantDiffusion(net, schedule, 5, include_charges=False, parameterization=Parameterization("x0"),
                                weighting=LossWeighting("snr_clamp", 0.05, 1.5),
                                type_process=CategoricalDiffusion(5, schedule))


def test_none_leaves_the_loss_bit_identical(make_batch):
    proc, mol = gaussian_process().train(), make_batch(SIZES, seed=1)
    ref = proc.loss(mol, generator=torch.Generator().manual_seed(3))
    again = proc.loss(mol, generator=torch.Generator().manual_seed(3), noise_align=noise_aligner("none"))
    # an alignment that changes nothing draws nothing either: the RNG stream is untouched
    ident = proc.loss(mol, generator=torch.Generator().manual_seed(3), noise_align=lambda e, x, b, n: e)
    for out in (again, ident):
        assert torch.equal(out.loss, ref.loss) and torch.equal(out.t_int, ref.t_int)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("mode", MODES)
def test_loss_uses_the_aligned_noise(mode, kind, make_batch):
    """``noise_align`` acts on the position noise against the normalised data, in both loss paths."""
    proc = (gaussian_process() if kind == "gaussian" else categorical_process()).train()
    mol = make_batch(SIZES, seed=2)  # not centred: the process centres it
    if kind == "categorical":
        mol = replace(mol, atomic_numbers=mol.atomic_numbers[:, :0])
    B, batch = mol.num_graphs, mol.batch
    t_int = torch.tensor([10, 500, 900])
    gen = torch.Generator().manual_seed(4)
    eps_pos = sample_zero_com_gaussian(batch, B, gen, torch.float32)
    eps_h = torch.randn(batch.shape[0], proc.feature_dim, generator=gen)
    x = proc.normalize(mol)[0]
    aligned = align_noise(eps_pos, x, batch, B, mode)

    def loss(noise, align=None):
        return proc.loss(mol, generator=torch.Generator().manual_seed(5), t_int=t_int, noise=noise,
                         noise_align=align).loss

    seen = []

    def spy(e, xx, b, n):
        seen.append((xx, n))
        return noise_aligner(mode)(e, xx, b, n)

    assert torch.equal(loss((eps_pos, eps_h), spy), loss((aligned, eps_h)))
    torch.testing.assert_close(seen[0][0], x, atol=0, rtol=0)
    assert seen[0][1] == B
    assert not torch.equal(loss((eps_pos, eps_h), spy), loss((eps_pos, eps_h)))


@pytest.mark.parametrize("mode", ["rotation", "both"])
def test_rotation_aligned_loss_is_invariant_to_rotating_the_molecule_alone(mode, make_batch, float64):
    """The aligned noise follows the molecule, so the loss no longer needs the noise rotated with it."""
    proc = gaussian_process().double().train()
    mol = make_batch(SIZES, seed=3, dtype=torch.float64)
    B, batch = mol.num_graphs, mol.batch
    gen = torch.Generator().manual_seed(6)
    noise = (sample_zero_com_gaussian(batch, B, gen, torch.float64),
             torch.randn(batch.shape[0], proc.feature_dim, generator=gen, dtype=torch.float64))
    t_int = torch.tensor([3, 400, 999])
    rots = rotations(B, 7)

    def loss(pos):
        return proc.loss(replace(mol, pos=pos), t_int=t_int, noise=noise, noise_align=noise_aligner(mode)).loss

    torch.testing.assert_close(loss(rotate(mol.pos, rots, batch) + 3.0), loss(mol.pos), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("mode", NOISE_ALIGNMENTS)
def test_a_tiny_training_run_with_each_option(mode, tmp_path, monkeypatch):
    import numpy as np

    from moldiff.data.arrays import MoleculeArrays
    from moldiff.data.loader import MolLoader
    from moldiff.pipeline import build_process
    from moldiff.training.trainer import Trainer

    rng = np.random.default_rng(0)
    mols = [(list(rng.choice(["H", "C", "N", "O"], size=k)), rng.normal(size=(k, 3)) * 1.2)
            for k in (3, 4, 5, 6, 3, 4)]
    arrays = MoleculeArrays.from_molecules(mols)
    cfg = ExperimentConfig.from_dict({
        "model": {"hidden_nf": 8, "n_layers": 1}, "diffusion": {"timesteps": 20},
        "train": {"batch_size": 3, "max_steps": 2, "eval_every_steps": 100, "n_eval_samples": 1,
                  "eval_sample_steps": 2, "log_every_steps": 1, "checkpoint_every_steps": 100,
                  "val_molecules": None, "align_noise": mode},
    })
    loader = MolLoader(arrays, batch_size=3, seed=0)
    stats = {"elements": list(arrays.elements), "n_atoms_hist": {3: 2, 4: 2, 5: 1, 6: 1}, "max_n_atoms": 6}
    torch.manual_seed(0)
    tr = Trainer(build_process(cfg, len(arrays.elements)), cfg, stats, loader.iter_batches, tmp_path, progress=False)
    assert (tr.noise_align is None) == (mode == "none")
    calls = []
    if tr.noise_align is not None:
        inner = tr.noise_align
        tr.noise_align = lambda *a: calls.append(1) or inner(*a)
    before = [p.detach().clone() for p in tr.process.parameters()]
    assert tr.fit().step == 2
    assert len(calls) == (0 if mode == "none" else 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.process.parameters(), strict=True))
    losses = [float(r.split(",")[2]) for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert losses and all(np.isfinite(losses))
