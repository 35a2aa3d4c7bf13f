"""Fuzzing (hypothesis): random bytes and text for every file reader, random values for every CLI option.

The contract under test: bad input never ends in a traceback. The library raises ``ValueError`` (or
``FileNotFoundError``); the CLI prints one line ``moldiff: error: ...`` and exits with 2 (argparse's
own errors too), or accepts the input. Work that would start (sampling, training, preparing QM9) is
stopped by a sentinel as soon as the arguments have been accepted, so the whole file runs in seconds.
"""

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moldiff.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "benchmarks" / "configs" / "tiny.yaml"
# MOLDIFF_FUZZ_EXAMPLES=500 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("MOLDIFF_FUZZ_EXAMPLES", "25")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

XYZ = "3\nwater\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n2\nh2\nH 0 0 0\nH 0.74 0 0\n"
SDF = """water
     RDKit          3D

  3  2  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
    0.9600    0.0000    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
   -0.2400    0.9300    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  1  3  1  0
M  END
> <alpha>
7.5

$$$$
"""


class WorkStarted(BaseException):
    """Raised where real work would begin: the arguments were accepted."""


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run):
    """The shared tiny run's checkpoint (``tests/conftest.py``; read-only)."""
    return tiny_run / "last.pt"


@pytest.fixture
def no_work(monkeypatch):
    """Stop sampling, training and QM9 preparation at their start."""
    import moldiff.data
    import moldiff.training.run
    from moldiff.sampling.sampler import Sampler

    def stop(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(Sampler, "sample", stop)
    monkeypatch.setattr(moldiff.training.run, "run_training", stop)
    monkeypatch.setattr(moldiff.data, "prepare_qm9", stop)


def run_cli(argv, capsys) -> int:
    """``main(argv)``; asserts the no-traceback contract and returns the exit code (-1: work started)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2)
        rc = exc.code
    except WorkStarted:
        rc = -1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    assert rc in (-1, 0, 2), (argv, rc, err)
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("moldiff: error: ")]
        assert len(lines) == 1, (argv, err)
    return rc


# ---------------------------------------------------------------------------- file contents
def mutated(text: str) -> st.SearchStrategy[str]:
    """``text`` with a few random insertions, deletions and replacements."""
    edit = st.tuples(st.integers(0, len(text)), st.integers(0, 8), st.text(max_size=6))

    def apply(edits):
        s = text
        for pos, cut, new in edits:
            pos = min(pos, len(s))
            s = s[:pos] + new + s[pos + cut:]
        return s

    return st.lists(edit, min_size=1, max_size=6).map(apply)


TEXTS = st.one_of(st.text(max_size=400), mutated(XYZ), mutated(SDF), st.just(""))
CONTENTS = st.one_of(st.binary(max_size=400), TEXTS.map(lambda s: s.encode("utf-8", "surrogatepass")))


def write(tmp: str, name: str, data: bytes) -> Path:
    path = Path(tmp) / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=CONTENTS, suffix=st.sampled_from([".xyz", ".sdf"]), strict=st.booleans())
def test_molecule_readers_raise_only_value_error(data, suffix, strict):
    from moldiff.io import read_molecules

    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "m" + suffix, data)
        try:
            records = read_molecules(path, strict=strict)
        except ValueError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip()
            return
        for r in records:
            assert r.error is not None or r.pos.shape == (len(r.symbols), 3)


@FUZZ
@given(data=CONTENTS, suffix=st.sampled_from([".xyz", ".sdf"]))
def test_evaluate_and_relax_any_file(data, suffix, capsys, no_work):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "m" + suffix, data)
        run_cli(["evaluate", path], capsys)
        run_cli(["relax", path, "--out", Path(tmp) / "r.sdf"], capsys)


@FUZZ
@given(data=CONTENTS, suffix=st.sampled_from([".xyz", ".sdf"]), name=st.text(max_size=12))
def test_data_import_any_file_and_name(data, suffix, name, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "m" + suffix, data)
        run_cli(["data", "import", path, "--name", name or "x", "--root", Path(tmp) / "root"], capsys)


@pytest.fixture(scope="module")
def checkpoint_bytes(tiny_ckpt):
    return tiny_ckpt.read_bytes()


@FUZZ
@given(data=st.data())
def test_checkpoint_readers_any_bytes(data, checkpoint_bytes, capsys, no_work):
    from moldiff.checkpoint import load_checkpoint
    from moldiff.training.property import load_predictor

    valid = checkpoint_bytes
    blob = data.draw(st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # truncated
        st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=4).map(
            lambda flips: bytes(b if i not in dict(flips) else dict(flips)[i] for i, b in enumerate(valid))),
    ))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "c.pt", blob)
        for reader in (load_checkpoint, load_predictor):
            try:
                reader(path)
            except ValueError:
                pass
        run_cli(["sample", "--model", path, "--num", "1", "--steps", "1", "--out", Path(tmp) / "o.xyz"], capsys)
        run_cli(["train", "--config", TINY, "--out", Path(tmp) / "r", "--init", path], capsys)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), mutated(TINY.read_text()),
                      st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_config_reader_any_text(text, capsys, no_work):
    from moldiff.config import ExperimentConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "c.yaml", text.encode("utf-8", "surrogatepass"))
        try:
            ExperimentConfig.load_yaml(path)
        except ValueError:
            pass
        run_cli(["train", "--config", path, "--out", Path(tmp) / "r"], capsys)


@FUZZ
@given(data=st.binary(max_size=300), which=st.sampled_from(["processed", "splits"]))
def test_dataset_npz_readers_any_bytes(data, which, capsys, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.setenv("MOLDIFF_DATA_DIR", str(Path(tmp) / "root"))
        mols = write(tmp, "m.xyz", (XYZ * 6).encode())
        assert main(["data", "import", str(mols), "--name", "mine"]) == 0
        capsys.readouterr()
        target = (Path(tmp) / "root" / "mine" / "processed" / "mine.npz" if which == "processed"
                  else Path(tmp) / "root" / "mine" / "splits.npz")
        assert target.is_file()
        target.write_bytes(data)
        cfg = write(tmp, "c.yaml", b"data:\n  dataset: mine\nmodel:\n  hidden_nf: 8\n  n_layers: 1\n"
                                   b"diffusion:\n  timesteps: 5\ntrain:\n  max_steps: 1\n  n_eval_samples: 0\n")
        assert run_cli(["train", "--config", cfg, "--out", Path(tmp) / "r"], capsys) == 2


@FUZZ
@given(data=CONTENTS)
def test_reference_smiles_any_file(data, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        mols = write(tmp, "m.xyz", XYZ.encode())
        ref = write(tmp, "ref.txt", data)
        run_cli(["evaluate", mols, "--reference", ref], capsys)


# ---------------------------------------------------------------------------- command line values
NUMBERISH = st.one_of(
    st.integers(-5, 300).map(str), st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "-1", "1e3", "nan", "inf", "-inf", "1.5", "0x10", "", " ", "١", "9" * 30]),
    st.floats(allow_nan=True).map(str),
)
VALUES = st.one_of(NUMBERISH, st.text(max_size=20))
NAMES = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=12).filter(lambda s: s not in (".", ".."))


def path_in(tmp: str) -> st.SearchStrategy[str]:
    """A file name inside ``tmp`` (random, possibly odd), or a path that cannot be written."""
    suffix = st.sampled_from([".sdf", ".xyz", ".json", ".csv", ".png", ""])
    return st.one_of(st.tuples(NAMES, suffix).map(lambda ns: str(Path(tmp) / (ns[0] + ns[1]))),
                     st.sampled_from([tmp, str(Path(tmp) / "missing" / "x.sdf"), "/sys/x.sdf", ""]))


SAMPLE_OPTIONS = {
    "--num": VALUES, "--steps": VALUES, "--seed": VALUES, "--format": VALUES, "--sampler": VALUES,
    "--eta": VALUES, "--batch-size": VALUES, "--batch-atoms": VALUES, "--device": VALUES,
    "--target": st.one_of(VALUES, VALUES.map(lambda v: f"alpha={v}")), "--guidance": VALUES,
    "--num-atoms": VALUES, "--model": st.one_of(VALUES, st.sampled_from(["qm9", "qm9-alpha"])),
}


@FUZZ
@given(data=st.data())
def test_sample_options_random_values(data, tiny_ckpt, capsys, no_work):
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["sample", "--model", tiny_ckpt, "--out", data.draw(path_in(tmp))]
        for opt in data.draw(st.lists(st.sampled_from(sorted(SAMPLE_OPTIONS)), min_size=1, max_size=3, unique=True)):
            argv += [opt, data.draw(SAMPLE_OPTIONS[opt])]
        if data.draw(st.booleans()):
            argv += ["--grid", data.draw(path_in(tmp))]
        run_cli(argv, capsys)


@FUZZ
@given(data=st.data())
def test_train_options_random_values(data, tiny_ckpt, capsys, no_work):
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--config", data.draw(st.one_of(st.just(str(TINY)), VALUES)),
                "--out", data.draw(path_in(tmp))]
        if data.draw(st.booleans()):
            argv += ["--condition", data.draw(st.one_of(VALUES, st.sampled_from(["alpha", "alpha,gap", "Cv,"])))]
        flag = data.draw(st.sampled_from(["", "--resume", "--init"]))
        if flag == "--init":
            argv += ["--init", data.draw(st.one_of(VALUES, st.just(str(tiny_ckpt)), st.just("qm9")))]
        elif flag:
            argv.append(flag)
        run_cli(argv, capsys)


@FUZZ
@given(data=st.data())
def test_evaluate_and_data_options_random_values(data, capsys, no_work):
    with tempfile.TemporaryDirectory() as tmp:
        mols = write(tmp, "m.xyz", XYZ.encode())
        argv = ["evaluate", data.draw(st.one_of(st.just(str(mols)), VALUES))]
        for opt in data.draw(st.lists(st.sampled_from(["--checks", "--workers", "--reference", "--json", "--csv"]),
                                      max_size=3, unique=True)):
            value = data.draw(path_in(tmp)) if opt in ("--json", "--csv") else data.draw(
                st.one_of(VALUES, st.sampled_from(["all", "edm,rings", "druglike"])))
            argv += [opt, value]
        run_cli(argv, capsys)
        run_cli(["data", "import", mols, "--name", data.draw(VALUES), "--seed", data.draw(VALUES),
                 "--root", data.draw(path_in(tmp))], capsys)
        run_cli(["data", "prepare", "--root", data.draw(path_in(tmp))], capsys)


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(["sample", "train", "evaluate", "data", "relax", "--out", "--num",
                                                  "-h", "--version", "import", "prepare"]), VALUES), max_size=5))
def test_random_command_lines(argv, capsys, no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written lands in the test's folder
    run_cli(argv, capsys)
    for p in tmp_path.iterdir():
        assert not p.name.endswith(".tmp"), p
