"""moldiff.sampling.inpaint: fixed atoms are kept exactly, the centre of mass is handled right."""

import pytest
import torch
from torch import nn

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.sampling.inpaint import Fragment, _renoise_gamma, inpaint, sample_sizes_given_fragment
from moldiff.sampling.sampler import SAMPLERS


def _fragment(m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(0, 5, (m,), generator=g)
    return Fragment(pos=torch.randn(m, 3, generator=g, dtype=torch.float64) * 1.3 + 7.0, types=types,
                    charges=torch.tensor([1.0, 6.0, 7.0, 8.0, 9.0])[types])


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("resample", [1, 2])
def test_fragment_kept_exactly_every_sampler(method, resample, make_process):
    proc = make_process()
    frag = _fragment()
    out = inpaint(proc, frag, [6, 9, 5], steps=4, method=method, resample=resample, seed=1)
    assert out.num_graphs == 3 and out.pos.dtype == torch.float64
    for types, pos in out.split():
        assert torch.equal(pos[:4], frag.pos)  # bit-identical, in the fragment's frame
        assert torch.equal(types[:4], frag.types)
        assert torch.isfinite(pos).all()
    charges = out.charges[out.fixed].view(3, 4)
    assert torch.equal(charges, frag.charges.long().expand(3, 4))
    assert out.fixed.sum() == 12 and bool(out.accepted.all())


@pytest.mark.parametrize("method", ["ancestral", "dpm2"])
def test_jump_and_bridge_keep_fragment(method, make_process):
    frag = _fragment(3)
    out = inpaint(make_process(), frag, [5, 6], steps=5, method=method, resample=2, jump=2, known_noise="bridge")
    for types, pos in out.split():
        assert torch.equal(pos[:3], frag.pos) and torch.equal(types[:3], frag.types)


def test_per_molecule_fragments_and_reproducibility(make_process):
    proc = make_process()
    frags = [_fragment(2, 0), _fragment(3, 1)]
    a = inpaint(proc, frags, [4, 5], steps=3, seed=3)
    b = inpaint(proc, frags, [4, 5], steps=3, seed=3)
    c = inpaint(proc, frags, [4, 5], steps=3, seed=4)
    assert torch.equal(a.pos, b.pos) and not torch.equal(a.pos, c.pos)
    for (types, pos), f in zip(a.split(), frags, strict=True):
        assert torch.equal(pos[: f.num_atoms], f.pos) and torch.equal(types[: f.num_atoms], f.types)


class _PairOracle(nn.Module):
    """Exact noise prediction for 2-atom molecules with r = x1 - x2 ~ N(MU, S^2 I) and known features."""

    MU, S = torch.tensor([1.5, 0.0, 0.0]), 0.1

    def __init__(self, schedule, h0):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("h0", h0)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, pos, h, t, batch, context=None):
        g = self.schedule.gamma(t)
        a = NoiseSchedule.alpha_from_gamma(g)[batch].unsqueeze(1)
        s = NoiseSchedule.sigma_from_gamma(g)[batch].unsqueeze(1)
        u = pos[0::2] - pos[1::2]
        a1, s1 = a[0::2], s[0::2]
        e1 = s1 * (u - a1 * self.MU) / (a1**2 * self.S**2 + 2 * s1**2)
        eps = torch.zeros_like(pos)
        eps[0::2], eps[1::2] = e1, -e1
        return eps, (h - a * self.h0) / s


@pytest.mark.parametrize("method", SAMPLERS)
def test_centre_of_mass_handled_exact_denoiser(method):
    """With the exact denoiser of a known pair distribution, the generated atom sits at x_fixed - MU."""
    sched = NoiseSchedule("polynomial_2", 1000)
    h0 = torch.tensor([0.25, 0.0, 0.0, 0.0, 0.0, 0.6])
    proc = EquivariantDiffusion(_PairOracle(sched, h0), sched, 5)
    frag = Fragment(pos=torch.tensor([[2.0, 1.0, -1.0]]), types=torch.tensor([0]), charges=torch.tensor([6.0]))
    out = inpaint(proc, frag, [2] * 300, steps=30, method=method, seed=0)
    p = out.pos.view(-1, 2, 3)
    r = p[:, 0] - p[:, 1]
    assert torch.allclose(r.mean(0), _PairOracle.MU.double(), atol=0.03)
    assert 0.04 < float(r.std(0).mean()) < 0.13  # the true spread is 0.1


def test_renoise_gamma_is_the_forward_transition():
    sched = NoiseSchedule("polynomial_2", 100)
    gt, gs = sched.gamma(torch.tensor([0.6])), sched.gamma(torch.tensor([0.3]))
    g = _renoise_gamma(gt, gs)
    a_ts = NoiseSchedule.alpha_from_gamma(gt) / NoiseSchedule.alpha_from_gamma(gs)
    assert torch.allclose(NoiseSchedule.alpha_from_gamma(g), a_ts)
    # composing q(z_s | x) and q(z_t | z_s) gives the variance of q(z_t | x)
    var = NoiseSchedule.sigma_from_gamma(g) ** 2 + a_ts**2 * NoiseSchedule.sigma_from_gamma(gs) ** 2
    assert torch.allclose(var, NoiseSchedule.sigma_from_gamma(gt) ** 2)


def test_accept_resamples_rejected_molecules(make_process):
    proc = make_process()
    calls = []

    def accept(out):
        calls.append(out.num_graphs)
        return torch.tensor([b % 2 == 0 for b in range(out.num_graphs)]) if len(calls) == 1 else \
            torch.ones(out.num_graphs, dtype=torch.bool)

    out = inpaint(proc, _fragment(2), [4, 4, 4, 4], steps=2, seed=0, accept=accept, max_tries=3)
    assert calls == [4, 2] and bool(out.accepted.all())
    assert out.tries.tolist() == [1, 2, 1, 2]
    never = inpaint(proc, _fragment(2), [4, 4], steps=2, seed=0, accept=lambda o: torch.zeros(o.num_graphs,
                                                                                          dtype=torch.bool),
                    max_tries=2)
    assert not bool(never.accepted.any()) and never.tries.tolist() == [2, 2]


def test_sizes_given_fragment():
    probs = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    n = sample_sizes_given_fragment(probs, 2, 500, torch.Generator().manual_seed(0))
    assert int(n.min()) >= 3 and set(n.tolist()) == {3, 4}
    with pytest.raises(ValueError, match="no molecule larger"):
        sample_sizes_given_fragment(probs, 4, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_atoms": [4]}, "nothing to generate"), ({"method": "euler"}, "unknown sampler"),
     ({"resample": 0}, "resample"), ({"known_noise": "x"}, "known_noise"), ({"jump": 0}, "jump")],
)
def test_bad_arguments(kwargs, match, make_process):
    args = {"num_atoms": [6], **kwargs}
    with pytest.raises(ValueError, match=match):
        inpaint(make_process(), _fragment(4), steps=2, **args)


def test_bad_fragments():
    with pytest.raises(ValueError, match="non-finite"):
        Fragment(pos=torch.tensor([[0.0, float("nan"), 0.0]]), types=torch.tensor([1]), charges=torch.tensor([6.0]))
    with pytest.raises(ValueError, match="same atoms"):
        Fragment(pos=torch.zeros(2, 3), types=torch.tensor([1]), charges=torch.tensor([6.0]))


# ---------------------------------------------------------------- every process the package builds
_BUILT = {
    "categorical-x0-selfcond": {"diffusion": {"parameterization": "x0", "loss_weighting": "snr_clamp",
                                              "atom_types": "categorical", "include_charges": False},
                                "model": {"self_condition": True, "hidden_nf": 16, "n_layers": 1}},
    "categorical-eps": {"diffusion": {"atom_types": "categorical", "include_charges": False},
                        "model": {"hidden_nf": 16, "n_layers": 1}},
    "gaussian-x0-selfcond": {"diffusion": {"parameterization": "x0", "loss_weighting": "snr_clamp"},
                             "model": {"self_condition": True, "hidden_nf": 16, "n_layers": 1}},
}


def _built_process(name):
    from moldiff.config import ExperimentConfig
    from moldiff.models import build_model

    proc = build_model(ExperimentConfig.from_dict(_BUILT[name]), 5, type_prior=torch.tensor([4.0, 3.0, 1.0, 1.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (zero-initialised output layers would hide the network)
        for p in proc.denoiser.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return proc.eval()


@pytest.mark.parametrize("name", list(_BUILT))
@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("resample, known_noise", [(1, "fresh"), (2, "fresh"), (2, "bridge")])
def test_fragment_kept_exactly_built_models(name, method, resample, known_noise):
    """Categorical types, x0 parameterization and self-conditioning: every sampler, with resampling."""
    proc = _built_process(name)
    assert proc.categorical_types == name.startswith("categorical")
    assert proc.self_conditioning == name.endswith("selfcond")
    frag = _fragment()
    out = inpaint(proc, frag, [6, 9, 5], steps=4, method=method, resample=resample, seed=1, known_noise=known_noise)
    assert out.num_graphs == 3
    for types, pos in out.split():
        assert torch.equal(pos[:4], frag.pos) and torch.equal(types[:4], frag.types)
        assert torch.isfinite(pos).all() and int(types.min()) >= 0 and int(types.max()) < 5
    again = inpaint(proc, frag, [6, 9, 5], steps=4, method=method, resample=resample, seed=1,
                    known_noise=known_noise)
    assert torch.equal(out.pos, again.pos) and torch.equal(out.types, again.types)


class _TypeSpy(nn.Module):
    """Categorical-type denoiser: positions shrink (x0 = pos / 2), logits always favour class ``FAVOURED``.

    Records the (one-hot / norm) type input and the self-conditioning estimate of every call.
    """

    FAVOURED = 3

    def __init__(self, k=5):
        super().__init__()
        self.k = k
        self.self_condition = True
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, pos, h, t, batch, context=None, self_cond=None):
        self.calls.append((h.clone(), t.clone(), self_cond))
        logits = torch.full((pos.shape[0], self.k), -30.0, dtype=pos.dtype)
        logits[:, self.FAVOURED] = 30.0
        return 0.5 * pos, logits


@pytest.mark.parametrize("method", SAMPLERS)
def test_categorical_types_drawn_from_logits_fixed_ones_noised(method):
    from moldiff.diffusion.categorical import CategoricalDiffusion

    sched = NoiseSchedule("polynomial_2", 100)
    spy = _TypeSpy()
    proc = EquivariantDiffusion(spy, sched, 5, include_charges=False, parameterization="x0",
                                type_process=CategoricalDiffusion(5, sched))
    frag = Fragment(pos=torch.randn(4, 3, dtype=torch.float64), types=torch.tensor([0, 1, 2, 4]),
                    charges=torch.tensor([1.0, 6.0, 7.0, 9.0]))
    out = inpaint(proc, frag, [7] * 20, steps=5, method=method, resample=2, seed=0)
    fixed, free = out.fixed, ~out.fixed
    assert torch.equal(out.types[fixed].view(20, 4), frag.types.expand(20, 4))
    assert bool((out.types[free] == _TypeSpy.FAVOURED).all())  # drawn from the network's logits
    norm_h = proc.norm_values[1]
    first_h, _, first_sc = spy.calls[0]
    last_h, last_t, last_sc = spy.calls[-1]
    onehot = torch.nn.functional.one_hot(frag.types, 5).to(first_h.dtype).repeat(20, 1)
    # the network always reads one-hot types; the fixed atoms' are q-samples: noised at t = T, clean at t = 0
    for h, _, _ in spy.calls:
        assert torch.equal((h * norm_h).sum(1), torch.ones(h.shape[0], dtype=h.dtype))
    assert not torch.equal(first_h[fixed] * norm_h, onehot)
    assert float(last_t.max()) == 0.0 and torch.equal(last_h[fixed] * norm_h, onehot)
    assert bool((last_h[free] * norm_h)[:, _TypeSpy.FAVOURED].all())
    # self-conditioning: the previous clean estimate is fed back after the first call
    assert first_sc is None and last_sc is not None and last_sc[0].shape == (out.pos.shape[0], 3)


def test_inpaint_molecules_api_categorical_model(tmp_path):
    """The public call with a categorical, self-conditioned, x0 model and a fragment file."""
    import numpy as np

    from moldiff.config import ExperimentConfig
    from moldiff.fragments import inpaint_molecules
    from moldiff.io import write_xyz
    from moldiff.pipeline import MolDiff

    elements = ["H", "C", "N", "O", "F"]
    stats = {"elements": elements, "n_atoms_hist": {n: 1 for n in range(4, 12)}, "max_n_atoms": 11}
    model = MolDiff(_built_process("categorical-x0-selfcond"), ExperimentConfig.from_dict(
        _BUILT["categorical-x0-selfcond"]), stats, name="tiny-categorical")
    symbols = ["C", "O", "H"]
    pos = np.array([[0.1, -0.2, 0.3], [1.3, -0.2, 0.3], [-0.5, 0.7, 0.3]])
    write_xyz(tmp_path / "frag.xyz", [(symbols, pos)])
    for method in SAMPLERS:
        mols, out = inpaint_molecules(model, [tmp_path / "frag.xyz"], 3, steps=3, method=method, resample=2)
        assert len(mols) == 3 and bool(out.accepted.all())
        for syms, p in mols:
            assert syms[:3] == symbols and np.array_equal(p[:3], pos) and len(syms) > 3
            assert set(syms) <= set(elements)
