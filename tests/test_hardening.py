"""Issue 10: bad input ends in one line and exit 2, interrupts lose nothing, help and output explain themselves."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moldiff.cli import _parse_args, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "configs" / "tiny.yaml"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("moldiff: "), err
    return err[0]


def _no_work(monkeypatch):
    """Fail the test if a model is loaded (i.e. work started before the arguments were checked)."""
    import moldiff.pipeline

    def boom(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(moldiff.pipeline, "load_model", boom)


# ============================================================================ output paths before work
def test_out_onto_a_directory_refused_before_sampling(tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    folder = tmp_path / "x.sdf"
    folder.mkdir()
    assert main(["sample", "--out", str(folder)]) == 2
    assert "is a directory" in _one_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_into_read_only_folder_refused_before_sampling(tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["sample", "--out", str(ro / "x.sdf")]) == 2
        assert "cannot write" in _one_line(capsys)
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and os.geteuid() != 0,
                    reason="needs a read-only /sys")
def test_out_into_read_only_filesystem_refused_before_sampling(capsys, monkeypatch):
    import tempfile

    try:  # /sys refuses new files even for root; skip where it does not
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        pass
    else:
        os.close(fd)
        os.unlink(probe)
        pytest.skip("/sys is writable here")
    _no_work(monkeypatch)
    assert main(["sample", "--out", "/sys/x.sdf"]) == 2
    assert "cannot write to /sys" in _one_line(capsys)


def test_evaluate_outputs_checked_before_work(tmp_path, capsys):
    xyz = tmp_path / "m.xyz"
    xyz.write_text("2\nh2\nH 0 0 0\nH 0.74 0 0\n")
    (tmp_path / "j").mkdir()
    assert main(["evaluate", str(xyz), "--json", str(tmp_path / "j")]) == 2
    line = _one_line(capsys)
    assert "--json" in line and "is a directory" in line


def test_train_out_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", "--config", str(TINY), "--out", str(f)]) == 2
    assert "not a directory" in _one_line(capsys)


# ============================================================================ one-line argument errors
@pytest.mark.parametrize("argv_tail, text", [
    (["--num", "0"], "--num"), (["--num", "-1"], "--num"), (["--steps", "0"], "--steps"),
    (["--seed", "99999999999999999999"], "seed must be between 0 and"), (["--seed", "-1"], "seed"),
    (["--guidance", "nan"], "finite"), (["--eta", "inf"], "finite"), (["--num", "1e3"], "--num"),
])
def test_bad_numbers_one_line_exit_2(tmp_path, capsys, argv_tail, text):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--out", str(tmp_path / "x.sdf"), *argv_tail])
    assert exc.value.code == 2
    line = _one_line(capsys)
    assert line.startswith("moldiff: error: ") and text in line and "usage:" not in line


def test_missing_command_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required" in _one_line(capsys)


def test_library_refuses_huge_seed(tiny_run):
    from moldiff.pipeline import load_model

    with pytest.raises(ValueError, match="seed"):
        load_model(str(tiny_run / "last.pt")).sample_raw(1, steps=2, seed=2**70)


# ============================================================================ files
def test_unknown_element_is_named(tmp_path, capsys):
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles("C"))
    from rdkit.Chem import AllChem

    AllChem.EmbedMolecule(mol, randomSeed=0)
    lines = Chem.MolToMolBlock(mol).split("\n")
    lines[4] = lines[4][:31] + "Qz " + lines[4][34:]
    sdf = tmp_path / "qz.sdf"
    sdf.write_text("\n".join(lines) + "$$$$\n")
    xyz = tmp_path / "qz.xyz"
    xyz.write_text("2\nx\nQz 0 0 0\nH 1 0 0\n")
    for path in (sdf, xyz):
        assert main(["evaluate", str(path)]) == 2
        line = _one_line(capsys)
        assert "'Qz'" in line and "unknown element" in line, line


# ============================================================================ checkpoints and training
def test_init_and_resume_with_another_architecture_one_line(tiny_run, tmp_path, capsys):
    from moldiff.config import ExperimentConfig

    other = tmp_path / "other.yaml"
    ExperimentConfig.load_yaml(TINY).override(model={"hidden_nf": 16}).save_yaml(other)
    assert main(["train", "--config", str(other), "--out", str(tmp_path / "r"), "--init",
                 str(tiny_run / "last.pt")]) == 2
    assert "architecture" in _one_line(capsys)
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--config", str(other), "--out", str(run), "--resume"]) == 2
    assert "architecture" in _one_line(capsys)


def test_train_init_resolves_shipped_model_names(tmp_path, capsys):
    import torch

    from moldiff.config import ExperimentConfig
    from moldiff.pipeline import PRETRAINED_DIR

    shipped = torch.load(PRETRAINED_DIR / "qm9.pt", weights_only=True)
    cfg = ExperimentConfig.from_dict(shipped["config"]).override(
        data={"max_molecules": 8},
        train={"max_steps": 1, "max_minutes": None, "batch_size": 8, "n_eval_samples": 0, "val_molecules": 8,
               "compile": False, "device": "cpu", "epochs": 1},
    )
    path = tmp_path / "ft.yaml"
    cfg.save_yaml(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "ft"), "--init", "qm9"]) == 0
    assert (tmp_path / "ft" / "last.pt").is_file()
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "x"), "--init", "no-such-model"]) == 2
    assert "shipped models" in _one_line(capsys)


def test_dataset_too_small_to_split_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOLDIFF_DATA_DIR", str(tmp_path / "data"))
    one = tmp_path / "one.xyz"
    one.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    assert main(["data", "import", str(one), "--name", "one"]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  dataset: one\nmodel:\n  hidden_nf: 8\n  n_layers: 1\ndiffusion:\n  timesteps: 10\n")
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "too small to split" in _one_line(capsys)
    assert not (tmp_path / "run" / "last.pt").exists()


def _steps(log: Path) -> list[int]:
    with open(log, newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def test_interrupted_train_says_how_to_resume_and_log_is_truncated(tmp_path, capsys, monkeypatch):
    from moldiff.training.trainer import Trainer

    real_log = Trainer._log

    def log_then_interrupt(self, row):
        real_log(self, row)
        if row["step"] == 12:  # logged, but the last checkpoint is at step 8
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_log", log_then_interrupt)
    run = tmp_path / "run"
    assert main(["train", "--config", str(TINY), "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after the progress bar
    assert "interrupted (SIGINT)" in line and "(step 8)" in line and "--resume" in line and str(run) in line
    assert _steps(run / "log.csv") == [4, 8, 12]
    assert not [p for p in run.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    monkeypatch.setattr(Trainer, "_log", real_log)
    assert main(["train", "--config", str(TINY), "--out", str(run), "--resume"]) == 0
    steps = _steps(run / "log.csv")
    assert steps == sorted(set(steps)) and steps[:3] == [4, 8, 12]


def test_truncate_log_keeps_rows_up_to_step(tmp_path):
    from moldiff.training.trainer import truncate_log

    log = tmp_path / "log.csv"
    log.write_text("step,loss\r\n4,1\r\n8,1\r\n12,1\r\n")
    assert truncate_log(log, 8) == 1
    assert log.read_bytes() == b"step,loss\r\n4,1\r\n8,1\r\n"
    assert truncate_log(log, 8) == 0 and truncate_log(tmp_path / "missing.csv", 3) == 0


# ============================================================================ interrupts while sampling
def _interrupt_sampling(monkeypatch, signum: int | None):
    from moldiff.sampling.sampler import Sampler

    def interrupted(self, *args, **kwargs):
        if signum is None:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises here
        raise AssertionError("signal not delivered")

    monkeypatch.setattr(Sampler, "sample", interrupted)  # the first batch


@pytest.mark.parametrize("signum, code", [(None, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupted_sample_leaves_nothing(tiny_run, tmp_path, capsys, monkeypatch, signum, code):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    _interrupt_sampling(monkeypatch, signum)
    old = signal.getsignal(signal.SIGTERM)
    rc = main(["sample", "--model", str(tiny_run / "last.pt"), "--num", "3", "--steps", "5",
               "--out", str(out_dir / "s.sdf")])
    assert rc == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("moldiff: interrupted") and "not written" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert list(out_dir.iterdir()) == []  # no samples, no hidden .s.sdf.*.tmp
    assert signal.getsignal(signal.SIGTERM) is old  # the handler is restored


def test_sigterm_real_process_leaves_no_temp_file(tmp_path):
    out = tmp_path / "s.xyz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "moldiff.cli", "sample", "--num", "50", "--steps", "1000",
                             "--sampler", "ancestral", "--no-evaluate", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".s.xyz.*")):
        time.sleep(0.1)  # the writer's temporary file exists once sampling has started
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].split("\r")[-1].startswith("moldiff: interrupted (SIGTERM)")
    assert list(tmp_path.iterdir()) == []


# ============================================================================ conditional targets
def test_target_far_outside_training_range_needs_a_flag(tmp_path, capsys):
    out = tmp_path / "a.sdf"
    base = ["sample", "--model", "qm9-alpha", "--num", "3", "--steps", "5", "--out", str(out)]
    assert main([*base, "--target", "alpha=1e9"]) == 2
    line = _one_line(capsys)
    assert "outside the training range" in line and "--allow-extrapolation" in line and not out.exists()
    assert main([*base, "--target", "alpha=1e9", "--allow-extrapolation"]) == 0
    captured = capsys.readouterr()
    assert "outside the training range" in captured.err
    assert "validity (connected molecule)" in captured.out and "validity (EDM, largest fragment)" in captured.out


def test_conditional_model_without_target_says_targets_are_drawn(tmp_path, capsys):
    out = tmp_path / "a.xyz"
    assert main(["sample", "--model", "qm9-alpha", "--num", "2", "--steps", "3", "--no-evaluate",
                 "--out", str(out)]) == 0
    assert "drawn from the training distribution" in capsys.readouterr().err


# ============================================================================ summaries and SDF titles
def test_summary_shows_connected_validity_next_to_edm(capsys, tmp_path):
    from moldiff.evaluation.report import evaluate_molecules, format_summary

    # two H2 far apart: EDM-valid (largest fragment), but not one connected molecule
    table, summary = evaluate_molecules([(["H", "H", "H", "H"], [[0, 0, 0], [0.74, 0, 0], [20, 0, 0], [20.74, 0, 0]])])
    assert summary["validity"] == 1.0 and summary["validity_connected"] == 0.0
    text = format_summary(summary)
    rows = text.splitlines()
    edm = next(i for i, r in enumerate(rows) if r.startswith("validity (EDM"))
    assert rows[edm + 1].startswith("validity (connected molecule)") and "0.00 %" in rows[edm + 1]
    assert "1 of 1 EDM-valid molecules are disconnected" in text
    xyz = tmp_path / "m.xyz"
    xyz.write_text("4\nx\nH 0 0 0\nH 0.74 0 0\nH 20 0 0\nH 20.74 0 0\n")
    assert main(["evaluate", str(xyz)]) == 0
    assert "validity (connected molecule)" in capsys.readouterr().out


def test_sdf_titles_carry_index_and_smiles_or_invalid(tiny_run, tmp_path):
    from rdkit import Chem

    out = tmp_path / "s.sdf"
    assert main(["sample", "--model", str(tiny_run / "last.pt"), "--num", "6", "--steps", "5", "--out", str(out)]) == 0
    titles = [block.split("\n", 1)[0] for block in out.read_text().split("$$$$\n") if block.strip()]
    assert [t.split()[0] for t in titles] == [str(k) for k in range(1, 7)]
    for t in titles:
        rest = t.split(maxsplit=1)[1]
        assert rest.startswith("invalid") or Chem.MolFromSmiles(rest) is not None, t


def test_sampling_progress_advances_per_step(tiny_run, monkeypatch):
    import moldiff.sampling.batching as batching_mod
    import moldiff.sampling.sampler as sampler_mod
    from moldiff.pipeline import load_model

    bars = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            self.total, self.n, self.updates, self.disable = total, 0, [], kwargs.get("disable", False)
            self.unit = kwargs.get("unit")
            bars.append(self)

        def update(self, k=1):
            self.n += k
            self.updates.append(k)

        def set_postfix_str(self, s):
            pass

        def refresh(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

    monkeypatch.setattr(sampler_mod, "tqdm", Bar)  # the per-batch bar
    monkeypatch.setattr(batching_mod, "tqdm", Bar)  # the outer bar over all batches
    model = load_model(str(tiny_run / "last.pt"))
    model.sample_raw(4, steps=7, progress=True, batch_size=2)  # two batches of 7 steps
    outer = [b for b in bars if not b.disable and b.unit == "step" and b.total == 14]
    assert len(outer) == 1 and outer[0].updates == [1] * 14


def test_write_stats_keeps_date_when_content_unchanged(tmp_path):
    import json

    from moldiff.data.statistics import write_stats

    path = tmp_path / "stats.json"
    write_stats(path, {"version": 1, "provenance": {"created": "2020-01-01"}, "x": [1, 2]})
    before = path.read_bytes()
    write_stats(path, {"version": 1, "provenance": {"created": "2030-12-31"}, "x": [1, 2]})
    assert path.read_bytes() == before
    write_stats(path, {"version": 1, "provenance": {"created": "2030-12-31"}, "x": [1, 3]})
    assert json.loads(path.read_text())["provenance"]["created"] == "2030-12-31"


# ============================================================================ help, packaging, README
COMMANDS = [["data"], ["data", "prepare"], ["data", "import"], ["data", "build"], ["data", "merge"], ["train"],
            ["sample"], ["evaluate"], ["relax"], ["models"]]


def _command_tree(parser, prefix=()):
    """Every (sub)command of the CLI as a list of words, found from the parser itself."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [*prefix, name]
                yield from _command_tree(sub, (*prefix, name))


def test_examples_cover_every_command(monkeypatch):
    from moldiff import cli

    built = []  # the parser _parse_args builds, caught instead of parsing
    monkeypatch.setattr(cli._Parser, "parse_args", lambda self, argv=None: built.append(self))
    cli._parse_args([])
    parser = built[0]
    found = sorted(" ".join(c) for c in _command_tree(parser))
    assert found == sorted(" ".join(c) for c in COMMANDS)  # COMMANDS (the help test below) lists them all
    assert not [c for c in found if f"moldiff {c}" not in cli.EXAMPLES]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_help_shows_an_example(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse_args([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"moldiff {cmd[0]}" in out.split("example", 1)[1]


def test_help_texts(capsys):
    from moldiff.conditioning import PROPERTIES

    with pytest.raises(SystemExit):
        _parse_args(["--help"])
    top = capsys.readouterr().out
    assert "Command line:" not in top and "``" not in top and "quickstart" in top
    with pytest.raises(SystemExit):
        _parse_args(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 100)" in text  # --num
    assert "--seed SEED random seed" in text
    assert "qm9-<prop>" in text and "training distribution" in text
    for name, spec in PROPERTIES.items():
        assert f"{name} [{spec.unit}]" in text
    assert "--guidance GUIDANCE classifier-free guidance weight" in text and "default: none" in text
    with pytest.raises(SystemExit):
        _parse_args(["evaluate", "--help"])
    assert "--workers WORKERS processes" in " ".join(capsys.readouterr().out.split())


def test_pyproject_license_is_an_spdx_string():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(meta["project"]["license"], str)
    requires = " ".join(meta["build-system"]["requires"])
    assert "setuptools>=77" in requires.replace(" ", "")


def test_samples_sdf_is_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "check-ignore", "-q", "samples.sdf"], cwd=ROOT)
    assert res.returncode == 0


def test_readme_first_hour():
    text = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in text and ".venv/bin/moldiff" in text
    assert "sanitize=False" in text
    import re

    for n in re.findall(r"model\.(?:iter_samples|sample_raw|sample)\((\d[\d_]*)", text):
        assert int(n.replace("_", "")) <= 100, "README API example samples too many molecules for a CPU"
