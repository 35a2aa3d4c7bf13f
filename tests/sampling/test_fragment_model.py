"""Inpainting with a fragment-conditioned model (``model.fragment_input``): the fragment enters every step
clean and flagged, for every sampler, Gaussian / categorical types and the bond channel; the CLI path."""

import numpy as np
import pytest
import torch

from moldiff.checkpoint import save_checkpoint
from moldiff.config import ExperimentConfig
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import molecule_pairs, pair_classes
from moldiff.models import build_model
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.sampling.inpaint import Fragment, inpaint
from moldiff.sampling.sampler import SAMPLERS, Sampler
from moldiff.types import MolBatch

BUILT = {
    "gaussian": {},
    "categorical-x0-selfcond": {"atom_types": "categorical", "include_charges": False, "parameterization": "x0",
                                "loss_weighting": "snr_clamp"},
    "bonds": {"atom_types": "categorical", "include_charges": False, "bonds": "categorical",
              "parameterization": "x0", "loss_weighting": "snr_clamp"},
}
FRAG_BONDS = [(0, 1, 1), (1, 2, 2), (0, 3, 1)]


def _process(name: str) -> EquivariantDiffusion:
    cfg = ExperimentConfig.from_dict({
        "model": {"hidden_nf": 16, "n_layers": 1, "fragment_input": True, "self_condition": "selfcond" in name},
        "diffusion": {"timesteps": 100, **BUILT[name]}})
    torch.manual_seed(0)
    proc = build_model(cfg, 5, type_prior=torch.tensor([4.0, 3, 1, 1, 1]),
                       bond_prior=torch.tensor([8.0, 2, 1, 0.5, 0.5]) if name == "bonds" else None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (zero-initialised output layers would hide the network)
        for p in proc.denoiser.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return proc.double().eval()  # float64: the random network drives positions far out; rows compared to 1e-9


def _fragment(bonds=None) -> Fragment:
    g = torch.Generator().manual_seed(0)
    types = torch.tensor([1, 1, 3, 2])
    return Fragment(pos=1.3 * torch.randn(4, 3, generator=g, dtype=torch.float64) + 5.0, types=types,
                    charges=torch.tensor([1.0, 6, 7, 8, 9])[types], bonds=bonds)


def _record(proc: EquivariantDiffusion) -> list[dict]:
    calls: list[dict] = []
    proc.denoiser.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append({"pos": args[0], "h": args[1], "batch": args[3], **kwargs}),
        with_kwargs=True)
    return calls


@pytest.mark.parametrize("name", list(BUILT))
@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("resample", [1, 2])
def test_fragment_enters_every_step_clean_and_flagged(name, method, resample):
    proc = _process(name)
    assert proc.fragment_input
    calls = _record(proc)
    frag = _fragment(FRAG_BONDS if name == "bonds" else None)
    out = inpaint(proc, frag, [6, 8, 5], steps=4, method=method, resample=resample, seed=1)
    for types, pos in out.split():  # the output contract: the fragment exactly, in its own frame
        assert torch.equal(pos[:4], frag.pos) and torch.equal(types[:4], frag.types)
        assert torch.isfinite(pos).all()
    if name == "bonds":
        for bonds in out.split_bonds():
            assert sorted((i, j, c) for i, j, c in bonds if i < 4 and j < 4) == sorted(FRAG_BONDS)
    fixed = out.fixed
    centred = frag.pos - frag.pos.mean(0)
    onehot = torch.nn.functional.one_hot(frag.types, 5).double() / proc.norm_values[1]
    assert len(calls) >= 4 * resample + 1
    for call in calls:  # every network call: flag 1 on the fragment, the fragment clean
        assert torch.equal(call["fixed"], fixed)
        p = call["pos"][fixed].view(3, 4, 3)
        assert torch.allclose(p - p.mean(1, keepdim=True), centred.expand(3, 4, 3), atol=1e-9)
        assert torch.equal(call["h"][fixed][:, :5], onehot.repeat(3, 1))
        if name == "gaussian":
            assert torch.equal(call["h"][fixed][:, 5], (frag.charges / 10).repeat(3))
        if name == "bonds":
            pairs = molecule_pairs(call["batch"])
            both = fixed[pairs[0]] & fixed[pairs[1]]
            bi = torch.tensor([[o + i for o in (0, 6, 14) for i, _, _ in FRAG_BONDS],
                               [o + j for o in (0, 6, 14) for _, j, _ in FRAG_BONDS]])
            codes = torch.tensor([c for _ in range(3) for _, _, c in FRAG_BONDS])
            clean = torch.nn.functional.one_hot(pair_classes(pairs, bi, codes, 19), 5).double()
            assert torch.equal(call["bonds"][both], clean[both])
    again = inpaint(_process(name), frag, [6, 8, 5], steps=4, method=method, resample=resample, seed=1)
    assert torch.equal(out.pos, again.pos) and torch.equal(out.types, again.types)


def test_unconditional_sampling_passes_flag_zero():
    proc = _process("gaussian")
    calls = _record(proc)
    out = Sampler(proc).sample(torch.tensor([5, 7]), steps=3, seed=0)
    assert out.pos.shape[0] == 12 and calls and all(c.get("fixed") is None for c in calls)
    net = proc.denoiser  # None is read as zeros
    pos, h, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64), torch.rand(1)
    batch = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        for a, b in zip(net(pos, h, t, batch), net(pos, h, t, batch, fixed=torch.zeros(5, dtype=torch.bool)),
                        strict=True):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ tiny overfit
#: A planar 3-atom fragment (C, N, O) and one free F completing the parallelogram (in-plane: defined under E(3)).
LOCAL = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [0.4, 1.3, 0], [1.9, 1.3, 0]])
TYPES = torch.tensor([1, 2, 3, 4])
Z = torch.tensor([1.0, 6, 7, 8, 9])


def _rotations(n: int, g: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=g)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).T
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1).view(n, 3, 3)


def _train(flag: bool, steps: int = 400, batch: int = 32) -> EquivariantDiffusion:
    torch.manual_seed(0)
    proc = EquivariantDiffusion(EGNNDenoiser(6, hidden_nf=32, n_layers=2, fragment_input=flag),
                                NoiseSchedule("polynomial_2", 100), 5)
    opt = torch.optim.Adam(proc.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    fixed = torch.tensor([True, True, True, False]).repeat(batch) if flag else None
    types = TYPES.repeat(batch)
    proc.train()
    for _ in range(steps):
        pos = torch.einsum("bij,aj->bai", _rotations(batch, g), LOCAL).reshape(-1, 3)
        mol = MolBatch(pos=pos, one_hot=torch.nn.functional.one_hot(types, 5).float(),
                       atomic_numbers=Z[types].unsqueeze(1), batch=torch.arange(batch).repeat_interleave(4),
                       num_graphs=batch)
        opt.zero_grad()
        proc.loss(mol, generator=g, fixed=fixed).loss.mean().backward()
        opt.step()
    return proc.eval()


def _completion_error(proc: EquivariantDiffusion) -> tuple[np.ndarray, torch.Tensor]:
    frag = Fragment(pos=LOCAL[:3].double() + 2.0, types=TYPES[:3], charges=Z[TYPES[:3]])
    out = inpaint(proc, frag, [4] * 32, steps=50, seed=0)
    err = (out.pos[~out.fixed] - (LOCAL[3].double() + 2.0)).norm(dim=1).numpy()
    return err, out.types[~out.fixed]


def test_tiny_fragment_model_learns_where_the_free_atom_goes():
    """400 steps on one 4-atom shape (fragment fixed, one free atom): the completion lands on the target."""
    err, types = _completion_error(_train(flag=True))
    assert np.median(err) < 0.2 and (err < 0.3).mean() >= 0.9, err
    assert bool((types == 4).all())


def test_same_budget_without_the_flag_does_not():
    """The same network and steps trained unconditionally and completed by RePaint replacement: far off."""
    err, _ = _completion_error(_train(flag=False))
    assert np.median(err) > 1.0, err


# ------------------------------------------------------------------------------------------ checkpoint + CLI
def test_cli_fix_with_a_fragment_checkpoint(tmp_path, capsys):
    from rdkit import Chem

    from moldiff.cli import main
    from moldiff.pipeline import from_checkpoint, to_rdkit
    from moldiff.types import DatasetStats

    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 16, "n_layers": 1, "fragment_input": True},
                                      "diffusion": {"timesteps": 100},
                                      "train": {"fragment_prob": 0.5, "fragment_free": [1, 2]}})
    proc = build_model(cfg, 5)
    stats = DatasetStats(elements=("H", "C", "N", "O", "F"), n_atoms_hist={8: 1, 9: 2, 10: 1})
    state = proc.state_dict()
    ckpt = tmp_path / "frag_model.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "stats": stats.to_dict(), "model": state, "ema": state})
    assert from_checkpoint(ckpt).process.fragment_input
    symbols = ["C", "C", "O", "H", "H", "H"]
    pos = np.array([[-1.2133, 0.0, 0.0142], [0.2864, 0.0001, -0.1033], [0.9604, -0.0004, 0.9011],
                    [-1.6117, 0.8853, 0.5276], [-1.6119, -0.8836, 0.5309], [0.7383, 0.0002, -1.1112]])
    frag = tmp_path / "frag.sdf"
    w = Chem.SDWriter(str(frag))
    w.write(to_rdkit(symbols, pos))
    w.close()
    out = tmp_path / "out.sdf"
    for sampler in SAMPLERS:
        assert main(["sample", "--model", str(ckpt), "--fix", str(frag), "--num", "2", "--steps", "4",
                     "--sampler", sampler, "--out", str(out), "--no-evaluate"]) == 0
        assert "model trained for fixed atoms" in capsys.readouterr().err
        mols = list(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False))
        assert len(mols) == 2
        for mol in mols:
            assert mol.GetNumAtoms() > 6 and [a.GetSymbol() for a in mol.GetAtoms()][:6] == symbols
            np.testing.assert_allclose(mol.GetConformer().GetPositions()[:6], pos, atol=1e-4)  # SDF: 4 decimals
