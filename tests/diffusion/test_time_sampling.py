"""Tests for moldiff/diffusion/time_sampling.py: training-time samplers and their config wiring."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

from moldiff.config import TIME_SAMPLINGS, DiffusionConfig, ExperimentConfig
from moldiff.diffusion.time_sampling import TIME_SAMPLERS, TimeSampler
from moldiff.models import build_model

T = 1000
N = 20_000
SPEEDRUN = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / "speedrun.py"


def _u(sampler: TimeSampler, seed: int = 0, n: int = N) -> torch.Tensor:
    t = sampler.sample(n, T, torch.Generator().manual_seed(seed))
    return t.double() / T


def test_uniform_is_exactly_randint():
    got = TimeSampler().sample(257, T, torch.Generator().manual_seed(3))
    want = torch.randint(0, T + 1, (257,), generator=torch.Generator().manual_seed(3))
    assert got.dtype == torch.long and torch.equal(got, want)


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), (-0.5, 1.0), (0.8, 0.5)])
def test_logit_normal_quantiles(loc, scale):
    u = _u(TimeSampler("logit_normal", (loc, scale)))
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        want = 1 / (1 + math.exp(-(loc + scale * NormalDist().inv_cdf(q))))
        assert abs(torch.quantile(u, q).item() - want) < 0.01, q


def test_logit_normal_defaults_and_low_noise_emphasis():
    assert TimeSampler("logit_normal").params == (0.0, 1.0)
    assert _u(TimeSampler("logit_normal", (-1.0, 1.0))).median() < 0.3  # negative loc: low noise


@pytest.mark.parametrize("a, b", [(2.0, 1.0), (0.5, 2.0), (3.0, 3.0)])
def test_beta_mean_and_variance(a, b):
    u = _u(TimeSampler("beta", (a, b)))
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(u.mean().item() - mean) < 0.01
    assert abs(u.var().item() - var) < 0.06 * var


@pytest.mark.parametrize("sampler", [TimeSampler(), TimeSampler("logit_normal"), TimeSampler("beta", (0.7, 1.3))])
def test_range_dtype_device_and_determinism(sampler):
    t = sampler.sample(5000, T, torch.Generator().manual_seed(1), device="cpu")
    assert t.dtype == torch.long and t.shape == (5000,) and 0 <= int(t.min()) and int(t.max()) <= T
    assert torch.equal(t, sampler.sample(5000, T, torch.Generator().manual_seed(1)))
    assert not torch.equal(t, sampler.sample(5000, T, torch.Generator().manual_seed(2)))
    small = sampler.sample(500, 3, torch.Generator().manual_seed(1))
    assert set(small.tolist()) <= {0, 1, 2, 3}


def test_beta_draws_only_from_the_generator():
    torch.manual_seed(0)
    first = TimeSampler("beta", (0.5, 2.0)).sample(100, T, torch.Generator().manual_seed(4))
    torch.manual_seed(1)  # a different global RNG state changes nothing
    assert torch.equal(first, TimeSampler("beta", (0.5, 2.0)).sample(100, T, torch.Generator().manual_seed(4)))


BAD = [("cosine", ()), ("uniform", (1.0,)), ("logit_normal", (0.0,)), ("logit_normal", (0.0, 0.0)),
       ("logit_normal", (0.0, -1.0)), ("logit_normal", (float("nan"), 1.0)), ("beta", ()), ("beta", (1.0,)),
       ("beta", (0.0, 1.0)), ("beta", (1.0, -2.0))]


@pytest.mark.parametrize("name, params", BAD)
def test_refuses_bad_names_and_params_in_one_line(name, params):
    with pytest.raises(ValueError) as sampler_err:
        TimeSampler(name, params)
    with pytest.raises(ValueError) as config_err:
        DiffusionConfig(time_sampling=name, time_sampling_params=params)
    for err in (sampler_err, config_err):
        assert "\n" not in str(err.value)
    assert "diffusion.time_sampling" in str(config_err.value)


def test_config_names_match_the_samplers():
    assert TIME_SAMPLINGS == {name: n for name, (n, _) in TIME_SAMPLERS.items()}
    with pytest.raises(ValueError, match="list of numbers"):
        DiffusionConfig(time_sampling="beta", time_sampling_params=[True, 1.0])


def test_config_round_trip_yaml_and_old_configs(tmp_path):
    cfg = ExperimentConfig.from_dict({"diffusion": {"time_sampling": "logit_normal",
                                                    "time_sampling_params": [-0.5, 1]}})
    assert cfg.diffusion.time_sampling_params == (-0.5, 1.0)
    assert cfg.to_dict()["diffusion"]["time_sampling_params"] == [-0.5, 1.0]
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save_yaml(tmp_path / "c.yaml")
    assert ExperimentConfig.load_yaml(tmp_path / "c.yaml") == cfg
    old = ExperimentConfig().to_dict()  # a checkpoint's config from before the field existed
    del old["diffusion"]["time_sampling"], old["diffusion"]["time_sampling_params"]
    d = ExperimentConfig.from_dict(old).diffusion
    assert (d.time_sampling, d.time_sampling_params) == ("uniform", ())


def test_speedrun_set_override():
    spec = importlib.util.spec_from_file_location("speedrun_time_sampling", SPEEDRUN)
    speedrun = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speedrun)
    cfg = speedrun.apply_overrides(ExperimentConfig(), ["diffusion.time_sampling=logit_normal",
                                                        "diffusion.time_sampling_params=[-0.5,1.0]"])
    assert (cfg.diffusion.time_sampling, cfg.diffusion.time_sampling_params) == ("logit_normal", (-0.5, 1.0))
    cfg = speedrun.apply_overrides(ExperimentConfig(), ["diffusion.time_sampling=beta",
                                                        "diffusion.time_sampling_params=[2, 1]"])
    assert cfg.diffusion.time_sampling_params == (2.0, 1.0)
    with pytest.raises(ValueError, match="time_sampling_params"):
        speedrun.apply_overrides(ExperimentConfig(), ["diffusion.time_sampling=beta"])


def _model(make_batch, **diffusion):
    cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 8, "n_layers": 1}, "diffusion": diffusion})
    torch.manual_seed(0)
    return build_model(cfg, 5), make_batch((3, 4, 5, 2, 6), seed=2)


def test_default_loss_is_bit_identical_to_the_uniform_draw(make_batch):
    proc, mol = _model(make_batch)
    assert proc.time_sampler == TimeSampler()
    got = proc.loss(mol, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    t_int = torch.randint(0, T + 1, (mol.num_graphs,), generator=gen)  # the draw before time_sampling existed
    want = proc.loss(mol, generator=gen, t_int=t_int)
    assert torch.equal(got.t_int, t_int) and torch.equal(got.loss, want.loss)


def test_logit_normal_model_draws_t_from_its_sampler(make_batch):
    proc, mol = _model(make_batch, time_sampling="logit_normal", time_sampling_params=[-0.5, 1.0])
    sampler = TimeSampler("logit_normal", (-0.5, 1.0))
    assert proc.time_sampler == sampler
    got = proc.loss(mol, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    t_int = sampler.sample(mol.num_graphs, T, gen)
    want = proc.loss(mol, generator=gen, t_int=t_int)
    assert torch.equal(got.t_int, t_int) and torch.equal(got.loss, want.loss)
    uniform = torch.randint(0, T + 1, (mol.num_graphs,), generator=torch.Generator().manual_seed(7))
    assert not torch.equal(got.t_int, uniform)
