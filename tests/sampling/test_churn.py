"""Noise injection (``SamplingConfig.churn``, moldiff/sampling/churn.py) and the last step (``final``).

Every solver x {Gaussian types, categorical types, bond channel} runs with both options; the lift
is exact on the marginal; ``final="mean"`` returns the network's clean estimate; the defaults are
the sampler without them, bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import molecule_pairs, remove_mean
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.sampling.churn import MAX_CHURN, Churn, raise_noise, raised_grid
from moldiff.sampling.config import FINALS, SamplingConfig
from moldiff.sampling.sampler import Sampler, timestep_grid
from moldiff.sampling.solvers import SOLVERS, grid_gammas, solve

SCHED = NoiseSchedule("polynomial_2", 1000)
NUM_ATOMS = [3, 5, 4]
K = 4


class _Stub(nn.Module):
    """x0 = pos / 2; type logits favour class 3 (categorical) or a fixed one-hot x0 (Gaussian); bonds favour 2.

    Records the time of every call.
    """

    FAVOURED_TYPE, FAVOURED_BOND = 3, 2

    def __init__(self, bond_classes: int = 0, categorical: bool = True):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.bond_classes, self.categorical = bond_classes, categorical
        self.times: list[float] = []

    def forward(self, pos, h, t, batch, context=None, bonds=None):
        self.times.append(float(t[0]))
        feat = torch.full((pos.shape[0], h.shape[1]), -30.0 if self.categorical else 0.0, dtype=pos.dtype)
        feat[:, self.FAVOURED_TYPE] = 30.0 if self.categorical else 0.25  # one-hot / norm_values[1]
        if not self.categorical:
            feat[:, K] = 0.8  # charge channel: 8 / norm_values[2]
        out = (-0.5 * pos, feat)  # x0 parameterisation: x0 = pos + out
        if self.bond_classes:
            b = torch.full((bonds.shape[0], self.bond_classes), -30.0, dtype=pos.dtype)
            b[:, self.FAVOURED_BOND] = 30.0
            out = (*out, b)
        return out


def _process(kind: str, stub: bool = False) -> EquivariantDiffusion:
    """A float64 process of ``kind``: ``gaussian`` (EDM: one-hot + charges), ``categorical`` or ``bonds``."""
    sched = NoiseSchedule("polynomial_2", 100)
    torch.manual_seed(0)
    if kind == "gaussian":
        net = _Stub(categorical=False) if stub else EGNNDenoiser(K + 1, hidden_nf=16, n_layers=1)
        return EquivariantDiffusion(net, sched, K, parameterization="x0" if stub else "eps").double().eval()
    bonds = kind == "bonds"
    n_bond = 5 if bonds else 0
    net = _Stub(n_bond) if stub else EGNNDenoiser(K, hidden_nf=16, n_layers=1, bond_classes=n_bond)
    return EquivariantDiffusion(net, sched, K, include_charges=False, parameterization="x0",
                                type_process=CategoricalDiffusion(K, sched),
                                bond_process=CategoricalDiffusion(5, sched) if bonds else None).double().eval()


def _zero_com(pos: torch.Tensor, batch: torch.Tensor) -> bool:
    mean = torch.zeros(int(batch.max()) + 1, 3, dtype=pos.dtype).index_add_(0, batch, pos)
    return bool((mean.abs() < 1e-9 * max(1.0, float(pos.abs().max()))).all())


# ---------------------------------------------------------------------------------------------- the lift
@pytest.mark.parametrize("t, t_hat", [(0, 3), (100, 139), (500, 620), (900, 1000), (40, 40)])
def test_lift_maps_the_marginal_exactly(t, t_hat):
    """If z ~ q(z_t | x) = N(alpha x, sigma^2) then z' ~ q(z_that | x): mean alpha_hat x, variance sigma_hat^2."""
    g, g_hat = SCHED.gamma_table.double()[t], SCHED.gamma_table.double()[t_hat]
    a, s = NoiseSchedule.alpha_from_gamma(g), NoiseSchedule.sigma_from_gamma(g)
    a_hat, s_hat = NoiseSchedule.alpha_from_gamma(g_hat), NoiseSchedule.sigma_from_gamma(g_hat)
    one = torch.ones(1, dtype=torch.float64)
    scale = raise_noise((one,), g, g_hat, (0 * one,))[0]  # the map is scale * z + std * noise
    std = raise_noise((0 * one,), g, g_hat, (one,))[0]
    assert torch.allclose(scale * a, a_hat, rtol=1e-12)  # algebra, float64
    assert torch.allclose(scale**2 * s**2 + std**2, s_hat**2, rtol=1e-10)
    x, n = 0.7, 400_000  # and empirically
    gen = torch.Generator().manual_seed(0)
    z = a * x + s * torch.randn(n, dtype=torch.float64, generator=gen)
    z2 = raise_noise((z,), g, g_hat, (torch.randn(n, dtype=torch.float64, generator=gen),))[0]
    assert abs(float(z2.mean()) - float(a_hat) * x) < 5 * float(s_hat) / math.sqrt(n)
    assert abs(float(z2.var()) / float(s_hat) ** 2 - 1.0) < 5 * math.sqrt(2.0 / n)
    with pytest.raises(ValueError, match="gamma_hat"):
        raise_noise((z,), g_hat + 1, g_hat, (z,))


@pytest.mark.parametrize("churn", [0.05, 0.2, MAX_CHURN])
def test_raised_grid_is_the_nearest_level_in_the_window(churn):
    table = SCHED.gamma_table.double()
    grid = timestep_grid(1000, 20, "quadratic")
    assert torch.equal(raised_grid(grid, table, 0.0), grid[:-1])
    start = raised_grid(grid, table, churn)
    assert int(start[0]) == 1000 and bool((start >= grid[:-1]).all()) and int(start.max()) <= 1000
    for t, t_hat in zip(grid[:-1].tolist(), start.tolist(), strict=True):
        target = float(table[t]) + 2 * math.log1p(churn)  # sigma/alpha times (1 + churn)
        best = float((table[t:] - target).abs().min())
        assert abs(float(table[t_hat]) - target) == pytest.approx(best, abs=1e-12)
    windowed = raised_grid(grid, table, churn, window=(0.1, 0.5))
    inside = (grid[:-1] >= 100) & (grid[:-1] <= 500)
    assert torch.equal(windowed[inside], start[inside]) and torch.equal(windowed[~inside], grid[:-1][~inside])


# ---------------------------------------------------------------------------------------------- config, CLI
def test_config_defaults_and_validation():
    cfg = SamplingConfig()
    assert (cfg.churn, cfg.churn_range, cfg.final) == (0.0, None, "sample") and FINALS == ("sample", "mean")
    assert SamplingConfig(churn=0.4, churn_range=[0.02, 0.8]).churn_range == (0.02, 0.8)
    for kw, match in [({"churn": -0.1}, "churn"), ({"churn": 0.5}, "sqrt"), ({"churn": float("nan")}, "churn"),
                      ({"churn": 0.2, "churn_range": (0.5, 0.1)}, "churn_range"),
                      ({"churn": 0.2, "churn_range": (0.0, 1.5)}, "churn_range"),
                      ({"churn": 0.2, "churn_range": (0.1,)}, "churn_range"),
                      ({"churn": 0.2, "churn_range": 0.3}, "churn_range"),
                      ({"churn_range": (0.1, 0.5)}, "churn > 0"), ({"final": "argmax"}, "allowed")]:
        with pytest.raises(ValueError, match=match) as exc:
            SamplingConfig(**kw)
        assert "\n" not in str(exc.value)


def test_cli_flags(tmp_path, tiny_run, monkeypatch):
    from moldiff import cli

    args = cli._parse_args(["sample", "--out", "x.sdf", "--churn", "0.3", "--churn-range", "0.02,0.8",
                            "--final", "mean"])
    assert (args.churn, args.churn_range, args.final) == (0.3, (0.02, 0.8), "mean")
    defaults = cli._parse_args(["sample", "--out", "x.sdf"])
    assert (defaults.churn, defaults.churn_range, defaults.final) == (None, None, None)  # the model's recommendation
    for bad in (["--churn", "abc"], ["--churn-range", "0.5"], ["--churn-range", "0.8,0.2"], ["--final", "argmax"]):
        with pytest.raises(SystemExit) as exc:
            cli._parse_args(["sample", "--out", "x.sdf", *bad])
        assert exc.value.code == 2
    out = tmp_path / "c.xyz"
    model = str(tiny_run / "last.pt")
    assert cli.main(["sample", "--model", model, "--num", "2", "--steps", "4", "--churn", "0.3", "--final", "mean",
                     "--out", str(out), "--no-evaluate"]) == 0
    assert out.is_file()
    assert cli.main(["sample", "--model", model, "--num", "2", "--churn", "0.9", "--out", str(out)]) == 2
    assert cli.main(["sample", "--model", model, "--num", "2", "--churn-range", "0,1", "--out", str(out)]) == 2


def test_a_model_recommends_churn_and_final_and_the_flags_override_it(tmp_path, tiny_run):
    """``info["sampling"]`` may recommend churn / window / final; ``moldiff sample`` uses them unless
    a flag says otherwise (``--churn 0`` turns the injection off), and the header names them."""
    from moldiff import cli
    from moldiff.checkpoint import load_checkpoint, save_checkpoint
    from moldiff.pipeline import from_checkpoint

    payload = load_checkpoint(tiny_run / "last.pt")
    payload["info"] = {"sampling": {"method": "ddim", "steps": 4, "churn": 0.3, "churn_range": [0.1, 0.9],
                                    "final": "mean"}}
    rec = tmp_path / "rec.pt"
    save_checkpoint(rec, payload)
    assert from_checkpoint(rec).default_noise == (0.3, (0.1, 0.9), "mean")
    bad = dict(payload, info={"sampling": {"churn": 5.0}})  # an invalid record falls back to none
    save_checkpoint(tmp_path / "bad.pt", bad)
    assert from_checkpoint(tmp_path / "bad.pt").default_noise == (0.0, None, "sample")
    assert from_checkpoint(tiny_run / "last.pt").default_noise == (0.0, None, "sample")

    def run(*flags):
        out = tmp_path / "r.xyz"
        assert cli.main(["sample", "--model", str(rec), "--num", "2", "--out", str(out), "--no-evaluate",
                         *flags]) == 0
        return out.read_text()

    recommended = run()
    assert recommended == run("--churn", "0.3", "--churn-range", "0.1,0.9", "--final", "mean")
    plain = run("--churn", "0", "--final", "sample")
    assert plain != recommended


# ---------------------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("kind", ["gaussian", "categorical", "bonds"])
def test_every_solver_and_channel_runs_with_both_options(method, kind):
    proc = _process(kind)
    sampler = Sampler(proc)
    base = sampler.sample(NUM_ATOMS, seed=3, config=SamplingConfig(method, steps=6))
    explicit = sampler.sample(NUM_ATOMS, seed=3, config=SamplingConfig(method, steps=6, churn=0.0, final="sample"))
    assert torch.equal(base.pos, explicit.pos) and torch.equal(base.types, explicit.types)
    for churn, final in [(0.3, "sample"), (0.0, "mean"), (0.3, "mean"), (MAX_CHURN, "sample")]:
        window = (0.0, 0.7) if churn == 0.3 else None
        cfg = SamplingConfig(method, steps=6, churn=churn, final=final, churn_range=window)
        out = sampler.sample(NUM_ATOMS, seed=3, config=cfg, keep_chain=3)
        assert out.pos.shape == base.pos.shape and bool(torch.isfinite(out.pos).all())
        assert _zero_com(out.pos, out.batch) and all(_zero_com(p, out.batch) for p, _ in out.chain)
        assert not torch.equal(out.pos, base.pos), (churn, final)
        assert int(out.types.min()) >= 0 and int(out.types.max()) < K
        if kind == "bonds":
            i, j = out.bond_index
            assert bool((i < j).all()) and torch.equal(out.batch[i], out.batch[j])
        again = sampler.sample(NUM_ATOMS, seed=3, config=cfg)
        assert torch.equal(out.pos, again.pos)


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("kind", ["gaussian", "categorical", "bonds"])
def test_network_steps_from_the_raised_levels(method, kind):
    proc = _process(kind, stub=True)
    cfg = SamplingConfig(method, steps=8, spacing="quadratic", churn=0.4, final="mean")
    Sampler(proc).sample(NUM_ATOMS, seed=0, config=cfg)
    grid = timestep_grid(100, 8, "quadratic")
    start = raised_grid(grid, proc.schedule.gamma_table, 0.4)
    assert bool((start > grid[:-1]).any())
    assert [round(t * 100) for t in proc.denoiser.times] == start.tolist()  # S calls, the last one the estimate


def test_churn_renoises_the_discrete_channels(monkeypatch):
    proc = _process("bonds")
    seen = []
    monkeypatch.setattr("moldiff.sampling.channels.DiscreteChannels.renoise",
                        lambda self, s, t: seen.append((round(s * 100), round(t * 100))))
    Sampler(proc).sample(NUM_ATOMS, seed=0, config=SamplingConfig("dpm2", steps=5, churn=0.4, churn_range=(0.1, 0.9)))
    grid = timestep_grid(100, 5)
    start = raised_grid(grid, proc.schedule.gamma_table, 0.4, (0.1, 0.9))
    assert seen == [(t, th) for t, th in zip(grid[:-1].tolist(), start.tolist(), strict=True) if th > t] and seen


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("kind", ["gaussian", "categorical", "bonds"])
def test_final_mean_is_the_clean_estimate(method, kind):
    """Stub x0 = pos / 2: the output is exactly x0_hat at the last grid point, with the stub's types and bonds."""
    proc = _process(kind, stub=True)
    steps = 5
    mean = Sampler(proc).sample(NUM_ATOMS, seed=1, keep_chain=steps, config=SamplingConfig(method, steps=steps,
                                                                                           final="mean"))
    z_last = mean.chain[-2][0]  # the state at the last grid point t_1 > 0
    assert torch.allclose(mean.pos, remove_mean(0.5 * z_last, mean.batch, 3), atol=1e-12, rtol=1e-9)
    assert torch.equal(mean.chain[-1][0], mean.pos / proc.norm_values[0])
    assert bool((mean.types == _Stub.FAVOURED_TYPE).all())
    if kind == "gaussian":
        assert bool((mean.charges == 8).all())
    if kind == "bonds":
        assert mean.bond_index.shape[1] == molecule_pairs(mean.batch).shape[1]
        assert bool((mean.bond_type == _Stub.FAVOURED_BOND).all())
    sample = Sampler(proc).sample(NUM_ATOMS, seed=1, keep_chain=steps, config=SamplingConfig(method, steps=steps))
    z0 = sample.chain[-1][0]  # final="sample" stepped on to t = 0 and drew p(x | z_0) there
    assert not torch.allclose(sample.pos, remove_mean(0.5 * z0, sample.batch, 3), atol=1e-6)
    assert len(proc.denoiser.times) == 2 * steps + 1  # mean: S network calls, sample: S + 1


# ---------------------------------------------------------------------------------------------- solvers
def _toy(steps: int, churn: float, mu: float = 0.4, s: float = 0.5):
    """1-D data ~ N(mu, s^2), exact noise predictor at the (lifted) level of every call."""
    grid = timestep_grid(1000, steps)
    gam = grid_gammas(SCHED, grid)
    start = grid_gammas(SCHED, raised_grid(grid, SCHED.gamma_table, churn))
    a, sg = NoiseSchedule.alpha_from_gamma(start), NoiseSchedule.sigma_from_gamma(start)

    def eps_at(z, k):
        return (sg[k] * (z[0] - a[k] * mu) / (a[k] ** 2 * s**2 + sg[k] ** 2),)

    return gam, start, eps_at


@pytest.mark.parametrize("method", SOLVERS)
def test_toy_gaussian_keeps_its_distribution_under_churn(method):
    """Exact predictor, 50 steps, churn 0.05: the samples stay N(0.4, 0.5^2) up to the solvers' step error.

    Measured std errors -0.040 / -0.022 / -0.022 / -0.040 (ancestral, ddim, dpm2, dpm2sde; without
    churn -0.030 / -0.011 / +0.005 / +0.010); a lift without its fresh noise gives -0.11 to -0.40.
    Churn is per step: the total injected noise grows with the steps (Karras scale it as S_churn / N).
    """
    n, steps = 40_000, 50
    gam, start, eps_at = _toy(steps, 0.05)
    gen = torch.Generator().manual_seed(0)
    noise = lambda k: (torch.randn(n, dtype=torch.float64, generator=gen),)  # noqa: E731
    churn = Churn(start, noise)
    z = solve(method, (torch.randn(n, dtype=torch.float64, generator=gen),), eps_at, gam, noise_fn=noise, churn=churn)
    x = z[0] / NoiseSchedule.alpha_from_gamma(gam[-1])
    assert abs(float(x.mean()) - 0.4) < 0.01 and abs(float(x.std()) - 0.5) < 0.06, (float(x.mean()), float(x.std()))


@pytest.mark.parametrize("method", SOLVERS)
def test_a_zero_lift_changes_nothing(method):
    gam, _, eps_at = _toy(10, 0.0)
    z_T = torch.linspace(-2.0, 2.0, 7, dtype=torch.float64)

    def run(churn):
        gen = torch.Generator().manual_seed(0)
        noise = lambda k: (torch.randn(7, dtype=torch.float64, generator=gen),)  # noqa: E731
        return solve(method, (z_T,), eps_at, gam, noise_fn=noise, churn=churn)[0]

    zero = Churn(gam[:-1].clone(), lambda k: (_ for _ in ()).throw(AssertionError("no lift draws no noise")))
    assert torch.allclose(run(zero), run(None), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one level per step"):
        run(Churn(gam.clone(), lambda k: None))


def test_num_steps_stops_early_and_keeps_the_last_step_rule():
    gam, _, eps_at = _toy(6, 0.0)
    z_T = (torch.linspace(-2.0, 2.0, 5, dtype=torch.float64),)
    seen = []
    solve("dpm2", z_T, eps_at, gam, num_steps=4, callback=lambda k, z: seen.append(k))
    assert seen == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="num_steps"):
        solve("ddim", z_T, eps_at, gam, num_steps=7)


def test_multistep_solvers_take_lifted_steps_with_first_order():
    """Every step lifted: dpm2 is DDIM (its first-order form) from the lifted levels, to rounding."""
    gam, start, eps_at = _toy(10, 0.3)
    assert bool((start[1:] > gam[1:-1]).all())  # every step but the first (t = T) is lifted
    z_T = torch.linspace(-2.0, 2.0, 7, dtype=torch.float64)

    def run(method):
        gen = torch.Generator().manual_seed(0)
        noise = lambda k: (torch.randn(7, dtype=torch.float64, generator=gen),)  # noqa: E731
        return solve(method, (z_T,), eps_at, gam, churn=Churn(start, noise))[0]

    assert torch.allclose(run("dpm2"), run("ddim"), rtol=0, atol=1e-9)
