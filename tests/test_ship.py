"""``benchmarks/ops/ship.py``: a training checkpoint becomes a loadable shipped model with its sampling advice."""

import pytest
from script_loader import load_script


def _ship():
    return load_script("benchmarks/ops/ship.py")


def test_ship_records_sampling_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    import moldiff

    out = tmp_path / "tiny.pt"
    ship = _ship()
    assert ship.main([str(tiny_run / "last.pt"), "--name", "tiny", "--sampler", "ddim", "--steps", "7",
                      "--spacing", "quadratic", "--note", "test", "--out", str(out)]) == 0
    assert "shipped" in capsys.readouterr().out
    model = moldiff.load_model(str(out))
    assert model.default_sampling == ("ddim", 7) and model.info["note"] == "test"
    assert model.default_spacing == "quadratic"
    assert model.info["molecule_passes_approx"] > 0
    with pytest.raises(SystemExit, match="exists"):
        ship.main([str(tiny_run / "last.pt"), "--name", "tiny", "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown sampler"):
        ship.main([str(tiny_run / "last.pt"), "--name", "tiny", "--sampler", "euler", "--out", str(out), "--replace"])
