import shutil
from pathlib import Path

import pytest

from moldiff.cli import _parse_args, main
from moldiff.io import read_molecules

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run):
    """The shared tiny run's checkpoint (``tests/conftest.py``; read-only)."""
    return tiny_run / "last.pt"


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_parse_args_defaults():
    args = _parse_args(["sample", "--out", "x.sdf"])
    assert args.model == "qm9" and args.num == 100 and args.steps is None and args.seed == 0


def test_train_sample_roundtrip(tiny_ckpt, tmp_path):
    run = tiny_ckpt.parent
    for name in ("last.pt", "log.csv", "loss.png", "config.yaml"):
        assert (run / name).is_file()
    sdf, xyz = tmp_path / "s.sdf", tmp_path / "s.xyz"
    assert main(["sample", "--model", str(tiny_ckpt), "--num", "5", "--steps", "10", "--out", str(sdf)]) == 0
    assert main(["sample", "--model", str(tiny_ckpt), "--num", "5", "--steps", "10", "--out", str(xyz)]) == 0
    mols_sdf, mols_xyz = read_molecules(sdf), read_molecules(xyz)
    assert len(mols_sdf) == len(mols_xyz) == 5
    # same seed -> same molecules in both formats
    for a, b in zip(mols_sdf, mols_xyz, strict=True):
        assert a.symbols == b.symbols
        assert abs(a.pos - b.pos).max() < 1e-3


def test_resume_from_finished_run(tiny_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_ckpt.parent, run)
    assert main(["train", "--config", str(TINY), "--out", str(run), "--resume"]) == 0
    assert "trained" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--steps", "5000"], "steps must be between 1 and T"),
        (["--target", "alpha=80"], "unconditional"),
        (["--num-atoms", "500"], "number of atoms"),
    ],
)
def test_sample_bad_input_exit_2_no_output(tiny_ckpt, tmp_path, capsys, argv_tail, message):
    out = tmp_path / "out.sdf"
    argv = ["sample", "--model", str(tiny_ckpt), "--num", "2", "--out", str(out)]
    # later occurrences of --model override the first one
    assert main(argv + argv_tail) == 2
    assert message in _err_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_nonsense_num_is_rejected(value, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--num", value, "--out", str(tmp_path / "x.sdf")])
    assert exc.value.code == 2


def test_corrupt_checkpoint_and_bad_suffix(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["sample", "--model", str(bad), "--out", str(tmp_path / "o.sdf")]) == 2
    assert "corrupt" in _err_line(capsys)
    assert main(["sample", "--model", str(bad), "--out", str(tmp_path / "o.pdb")]) == 2
    assert "format" in _err_line(capsys)
    assert not (tmp_path / "o.sdf").exists()


def test_train_bad_config(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in _err_line(capsys)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  widht: 3\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "widht" in _err_line(capsys)
    assert main(["train", "--config", str(TINY), "--out", str(tmp_path / "r2"), "--resume"]) == 2
    assert "resume" in _err_line(capsys)


def test_conditional_train_and_sample(tmp_path, capsys):
    run = tmp_path / "cond"
    assert main(["train", "--config", str(TINY), "--condition", "alpha", "--out", str(run)]) == 0
    import torch

    stats = torch.load(run / "last.pt", weights_only=True)["stats"]
    assert stats["conditioning"] == ["alpha"] and "property_distribution" in stats
    out = tmp_path / "c.xyz"
    assert main(["sample", "--model", str(run / "last.pt"), "--target", "alpha=40", "--num", "3",
                 "--steps", "5", "--out", str(out)]) == 0
    assert len(read_molecules(out)) == 3
    capsys.readouterr()
    bad = tmp_path / "bad.xyz"
    assert main(["sample", "--model", str(run / "last.pt"), "--target", "gap=5", "--out", str(bad)]) == 2
    assert "alpha" in _err_line(capsys) and not bad.exists()


def test_sample_defaults_to_the_models_recommended_sampler(tiny_ckpt, tmp_path, monkeypatch):
    from moldiff.checkpoint import load_checkpoint, save_checkpoint
    from moldiff.pipeline import MolDiff, from_checkpoint

    payload = load_checkpoint(tiny_ckpt)
    payload["info"] = {**payload.get("info", {}), "sampling": {"method": "dpm2sde", "steps": 7}}
    save_checkpoint(tmp_path / "rec.pt", payload)
    assert from_checkpoint(tmp_path / "rec.pt").default_sampling == ("dpm2sde", 7)
    assert from_checkpoint(tiny_ckpt).default_sampling == ("ancestral", None)  # no recommendation: EDM's
    seen = {}
    real = MolDiff.iter_samples

    def spy(self, num, **kwargs):
        seen.update(kwargs)
        return real(self, num, **kwargs)

    monkeypatch.setattr(MolDiff, "iter_samples", spy)
    argv = ["sample", "--model", str(tmp_path / "rec.pt"), "--num", "2", "--out", str(tmp_path / "a.xyz")]
    assert main(argv) == 0
    assert (seen["config"].method, seen["config"].steps) == ("dpm2sde", 7)  # one SamplingConfig travels down
    assert main(argv + ["--sampler", "ancestral", "--steps", "3"]) == 0  # flags override each default
    assert (seen["config"].method, seen["config"].steps) == ("ancestral", 3)
    payload["info"]["sampling"] = {"method": "euler", "steps": 7}  # unknown: fall back, do not fail
    save_checkpoint(tmp_path / "bad.pt", payload)
    assert from_checkpoint(tmp_path / "bad.pt").default_sampling == ("ancestral", None)


@pytest.mark.slow  # inductor compile with the system C compiler
def test_sample_compile_matches_eager(tiny_ckpt, tmp_path):
    base = ["sample", "--model", str(tiny_ckpt), "--num", "3", "--steps", "3", "--no-evaluate"]
    assert main(base + ["--out", str(tmp_path / "eager.xyz")]) == 0
    assert main(base + ["--out", str(tmp_path / "compiled.xyz"), "--compile"]) == 0
    eager, compiled = read_molecules(tmp_path / "eager.xyz"), read_molecules(tmp_path / "compiled.xyz")
    for a, b in zip(eager, compiled, strict=True):
        assert a.symbols == b.symbols
        assert abs(a.pos - b.pos).max() < 1e-3
