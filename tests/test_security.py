"""Checkpoints are read with ``weights_only=True``: a hostile pickle is refused and never runs."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from moldiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "configs" / "tiny.yaml"


class _Payload:
    """Unpickling this calls ``os.system`` (it writes the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(path: Path, marker: Path, raw: bool = False) -> Path:
    payload = {"format_version": 1, "config": _Payload(marker), "stats": {}, "model": {}, "ema": {}}
    if raw:  # a plain pickle file, not torch's zip container
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path


def test_payload_really_is_hostile(tmp_path):
    """Sanity check of the fixture: an unrestricted load runs the payload."""
    marker = tmp_path / "marker"
    torch.load(_hostile(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def _one_line_refusal(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("moldiff: error: ") and "refused" in err[0]
    return err[0]


@pytest.mark.parametrize("raw", [False, True], ids=["torch-zip", "raw-pickle"])
def test_sample_refuses_hostile_model(tmp_path, capsys, raw):
    marker = tmp_path / "marker"
    evil = _hostile(tmp_path / "evil.pt", marker, raw=raw)
    out = tmp_path / "o.sdf"
    assert main(["sample", "--model", str(evil), "--num", "1", "--out", str(out)]) == 2
    _one_line_refusal(capsys)
    assert not marker.exists() and not out.exists()


def test_load_model_refuses_hostile_file(tmp_path):
    import moldiff

    marker = tmp_path / "marker"
    evil = _hostile(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match="refused"):
        moldiff.load_model(str(evil))
    assert not marker.exists()


def test_property_classifier_refuses_hostile_file(tmp_path):
    from moldiff.training.property import load_predictor

    marker = tmp_path / "marker"
    with pytest.raises(ValueError, match="refused"):
        load_predictor(_hostile(tmp_path / "phi.pt", marker))
    assert not marker.exists()


def test_train_init_refuses_hostile_file(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _hostile(tmp_path / "evil.pt", marker)
    run = tmp_path / "run"
    assert main(["train", "--config", str(TINY), "--out", str(run), "--init", str(evil)]) == 2
    _one_line_refusal(capsys)
    assert not marker.exists()
    assert not (run / "last.pt").exists()


def test_train_resume_refuses_hostile_file(tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    _hostile(run / "last.pt", marker)
    assert main(["train", "--config", str(TINY), "--out", str(run), "--resume"]) == 2
    _one_line_refusal(capsys)
    assert not marker.exists()


def test_shipped_models_load_with_weights_only():
    from moldiff.pipeline import PRETRAINED_DIR, shipped_models

    names = shipped_models()
    assert "qm9" in names
    for name in names:
        payload = torch.load(PRETRAINED_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
        assert {"config", "stats", "model", "ema"} <= set(payload)


def test_numpy_scalars_are_stored_plain_and_older_files_still_load(tmp_path):
    import numpy as np

    from moldiff.checkpoint import load_checkpoint, save_checkpoint, to_plain

    payload = {"config": {}, "stats": {"elements": [np.str_("H"), np.str_("C")], "mean": np.float64(1.5)},
               "model": {}, "ema": {}, "info": {"n": np.int64(3), "flags": np.array([1, 2])}}
    plain = to_plain(payload)
    assert type(plain["stats"]["elements"][0]) is str and type(plain["stats"]["mean"]) is float
    assert type(plain["info"]["n"]) is int and isinstance(plain["info"]["flags"], torch.Tensor)
    save_checkpoint(tmp_path / "new.pt", payload)
    torch.load(tmp_path / "new.pt", weights_only=True)  # no NumPy objects left in the file
    old = {**payload, "format_version": 1}  # as older versions wrote it: NumPy scalars pickled as such
    del old["info"]["flags"]
    torch.save(old, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["stats"]["elements"] == ["H", "C"] and type(loaded["stats"]["elements"][0]) is str
    assert type(loaded["stats"]["mean"]) is float and loaded["info"]["n"] == 3
