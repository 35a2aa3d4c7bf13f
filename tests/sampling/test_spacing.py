"""Step spacings (``SamplingConfig.spacing``): valid grids, the sampler follows them, CLI and config checks."""

import pytest

from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.sampling import config as config_mod
from moldiff.sampling import sampler as sampler_mod
from moldiff.sampling.config import SamplingConfig
from moldiff.sampling.sampler import SPACINGS, Sampler, timestep_grid

GAMMA = NoiseSchedule("polynomial_2", 1000).gamma_table


def test_the_two_lists_of_spacings_agree():
    assert config_mod.SPACINGS == sampler_mod.SPACINGS


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 999, 1000])
def test_every_grid_runs_from_T_to_0_and_always_moves(spacing, steps):
    grid = timestep_grid(1000, steps, spacing, GAMMA)
    assert grid.shape == (steps + 1,) and int(grid[0]) == 1000 and int(grid[-1]) == 0
    assert bool((grid[:-1] > grid[1:]).all())


def test_quadratic_is_dense_at_low_noise_and_logsnr_uniform_in_gamma():
    q = timestep_grid(1000, 10, "quadratic")
    assert q.tolist() == [1000, 810, 640, 490, 360, 250, 160, 90, 40, 10, 0]
    g = GAMMA.double()[timestep_grid(1000, 20, "logsnr", GAMMA)]
    steps = (g[:-1] - g[1:])[2:-2]  # interior steps: equal gamma decrements up to rounding to integer t
    assert float(steps.max() / steps.min()) < 1.6
    with pytest.raises(ValueError, match="gamma table"):
        timestep_grid(1000, 10, "logsnr")
    with pytest.raises(ValueError, match="spacing"):
        timestep_grid(1000, 10, "cubic")


def test_config_refuses_an_unknown_spacing():
    with pytest.raises(ValueError, match="spacing"):
        SamplingConfig(spacing="cubic")


def test_sampler_visits_the_configured_grid(make_process):
    proc = make_process()
    seen = []
    forward = proc.denoiser.forward

    def spy(pos, h, t, batch, *args, **kwargs):
        seen.append(round(float(t[0]) * proc.timesteps))
        return forward(pos, h, t, batch, *args, **kwargs)

    proc.denoiser.forward = spy
    Sampler(proc).sample([3, 4], seed=0, config=SamplingConfig("ddim", steps=5, spacing="quadratic"))
    T = proc.timesteps
    assert seen[:5] == timestep_grid(T, 5, "quadratic")[:5].tolist()


def test_cli_spacing_flag(tmp_path, tiny_run):
    from moldiff.cli import main

    out = tmp_path / "q.xyz"
    assert main(["sample", "--model", str(tiny_run / "last.pt"), "--num", "2", "--steps", "4", "--spacing",
                 "logsnr", "--out", str(out), "--no-evaluate"]) == 0
    assert out.is_file()
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", str(tiny_run / "last.pt"), "--spacing", "cubic", "--out", str(out)])
    assert exc.value.code == 2
