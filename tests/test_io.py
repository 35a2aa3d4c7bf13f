from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdkit import Chem

from moldiff.constants import ATOMIC_NUMBERS
from moldiff.io import MoleculeRecord, atomic_write, molecule_writer, read_molecules, write_sdf, write_xyz

FIXTURES = Path(__file__).parent / "fixtures"
WATER = "3\nwater\nO 0.0 0.0 0.1\nH 0.0 0.75 -0.5\nH 0.0 -0.75 -0.5\n"


def _write(tmp_path: Path, text: str, name: str = "m.xyz") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- golden fixtures
def test_read_golden_xyz_and_sdf_agree():
    xyz = read_molecules(FIXTURES / "small_mols.xyz")
    sdf = read_molecules(FIXTURES / "small_mols.sdf")
    assert [r.name for r in xyz] == ["ethanol", "hydrogen_cyanide", "furan"]
    assert [r.name for r in sdf] == [r.name for r in xyz]
    assert [r.num_atoms for r in xyz] == [9, 3, 9]
    for a, b in zip(xyz, sdf, strict=True):
        assert a.symbols == b.symbols
        np.testing.assert_allclose(a.pos, b.pos, atol=1e-4)
        assert a.bonds is None and a.error is None
    assert sdf[0].properties == {"score": 1.5}  # non-numeric "label" dropped
    assert sorted(o for _, _, o in sdf[1].bonds) == [1.0, 3.0]  # H-C#N
    assert sdf[0].pos.dtype == np.float64 and sdf[0].pos.shape == (9, 3)


def test_xyz_variants(tmp_path):
    text = "2\n\n6 0 0 0\n1 0 0 1.09\n\n1\nqm9 style\ncl 1.5*^-3 0 0\n\n"
    recs = read_molecules(_write(tmp_path, text))
    assert recs[0].symbols == ["C", "H"] and recs[0].name == ""
    assert recs[1].symbols == ["Cl"] and recs[1].pos[0, 0] == pytest.approx(1.5e-3)


def test_empty_file_gives_no_records(tmp_path):
    assert read_molecules(_write(tmp_path, "")) == []


# ----------------------------------------------------------------------------- malformed inputs
MALFORMED = {
    "too_few_atoms": ("3\nw\nO 0 0 0\nH 0 0 1\n2\nx\nH 0 0 0\nH 0 0 1\n", "wrong atom count"),
    "too_many_atoms": ("1\nw\nO 0 0 0\nH 0 0 1\n2\nx\nH 0 0 0\nH 0 0 1\n", "wrong atom count"),
    "non_numeric": ("1\nw\nO 0 zero 0\n2\nx\nH 0 0 0\nH 0 0 1\n", "non-numeric coordinate"),
    "unknown_element": ("1\nw\nXx 0 0 0\n2\nx\nH 0 0 0\nH 0 0 1\n", "unknown element"),
    "nan": ("1\nw\nO 0 nan 0\n2\nx\nH 0 0 0\nH 0 0 1\n", "non-finite"),
    "inf": ("1\nw\nO 0 inf 0\n2\nx\nH 0 0 0\nH 0 0 1\n", "non-finite"),
    "bad_count": ("three\nw\nO 0 0 0\n2\nx\nH 0 0 0\nH 0 0 1\n", "expected the atom count"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_xyz_strict_raises_one_line(tmp_path, case):
    text, problem = MALFORMED[case]
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        read_molecules(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "record 1" in msg and problem in msg


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_xyz_lenient_keeps_going(tmp_path, case):
    text, problem = MALFORMED[case]
    recs = read_molecules(_write(tmp_path, text), strict=False)
    assert problem in recs[0].error
    good = [r for r in recs if r.error is None]
    assert len(good) == 1 and good[0].name == "x" and good[0].symbols == ["H", "H"]


def test_truncated_xyz(tmp_path):
    path = _write(tmp_path, WATER + "3\nlast\nO 0 0 0\n")
    with pytest.raises(ValueError, match="record 2: truncated file"):
        read_molecules(path)
    recs = read_molecules(path, strict=False)
    assert recs[0].error is None and "truncated" in recs[1].error


def test_truncated_and_bad_sdf(tmp_path):
    block = Chem.MolToMolBlock(Chem.AddHs(Chem.MolFromSmiles("C")))
    truncated = block + "$$$$\n" + block[: len(block) // 2]
    path = _write(tmp_path, truncated, "t.sdf")
    with pytest.raises(ValueError, match=r"t\.sdf: record 2: truncated"):
        read_molecules(path)
    recs = read_molecules(path, strict=False)
    assert recs[0].error is None and recs[0].num_atoms == 5 and "truncated" in recs[1].error
    bad_count = block.replace("  5  4  0", "  7  4  0", 1)
    path = _write(tmp_path, bad_count + "$$$$\n" + block + "$$$$\n", "c.sdf")
    with pytest.raises(ValueError, match="record 1"):
        read_molecules(path)
    assert [r.error is None for r in read_molecules(path, strict=False)] == [False, True]


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_molecules(tmp_path / "nope.xyz")
    with pytest.raises(ValueError, match="unknown molecule format"):
        read_molecules(_write(tmp_path, WATER, "m.pdb"))
    (tmp_path / "bin.xyz").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="cannot read"):
        read_molecules(tmp_path / "bin.xyz")


# ----------------------------------------------------------------------------- writers
def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_write_xyz_rejects_bad_input_without_writing(tmp_path):
    good = (["O", "H"], np.zeros((2, 3)))
    for bad in [(["Xx"], np.zeros((1, 3))), (["H"], np.zeros((2, 3))), (["H"], np.full((1, 3), np.nan))]:
        with pytest.raises(ValueError):
            write_xyz(tmp_path / "o.xyz", [good, bad])
    assert not (tmp_path / "o.xyz").exists()
    with pytest.raises(ValueError, match="malformed"):
        write_xyz(tmp_path / "o.xyz", [MoleculeRecord("x", [], np.zeros((0, 3)), error="bad")])


def test_write_sdf_roundtrip(tmp_path):
    mols = [Chem.MolFromMolFile(str(FIXTURES / "small_mols.sdf"), sanitize=False, removeHs=False)]
    write_sdf(tmp_path / "o.sdf", mols)
    recs = read_molecules(tmp_path / "o.sdf")
    assert recs[0].name == "ethanol" and recs[0].num_atoms == 9
    with pytest.raises(ValueError, match="RDKit Mol"):
        write_sdf(tmp_path / "p.sdf", ["CCO"])
    assert not (tmp_path / "p.sdf").exists()


_elements = st.sampled_from(sorted(ATOMIC_NUMBERS))
_coord = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
_name = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=20)


@st.composite
def _molecule(draw):
    n = draw(st.integers(1, 12))
    symbols = draw(st.lists(_elements, min_size=n, max_size=n))
    pos = np.array(draw(st.lists(_coord, min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    return symbols, pos, draw(_name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mols=st.lists(_molecule(), min_size=1, max_size=5))
def test_xyz_roundtrip_property(tmp_path, mols):
    path = tmp_path / "rt.xyz"
    write_xyz(path, mols)
    recs = read_molecules(path)
    assert len(recs) == len(mols)
    for (symbols, pos, name), rec in zip(mols, recs, strict=True):
        assert rec.symbols == symbols and rec.error is None
        assert rec.name == " ".join(name.split())
        np.testing.assert_allclose(rec.pos, pos, atol=1e-9)
    write_xyz(path, recs)  # records themselves round-trip
    assert [r.symbols for r in read_molecules(path)] == [m[0] for m in mols]


def test_molecule_writer_streams_batches_atomically(tmp_path):
    water = (["O", "H", "H"], np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]))
    path = tmp_path / "stream.xyz"
    with molecule_writer(path, "xyz") as write:
        assert write([water, water]) == 2
        assert not path.exists()  # nothing visible until the stream is complete
        assert write([water]) == 1
        assert write.written == 3
    assert len(read_molecules(path)) == 3
    # a bad molecule in a later batch: the whole file is abandoned, the old one is kept
    with pytest.raises(ValueError, match="molecule 3"):
        with molecule_writer(path, "xyz") as write:
            write([water, water])
            write([(["Xq"], np.zeros((1, 3)))])
    assert len(read_molecules(path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream.xyz"]
    sdf = tmp_path / "stream.sdf"
    with pytest.raises(ValueError, match="molecule 2: expected an RDKit Mol"):
        with molecule_writer(sdf, "sdf") as write:
            write([Chem.MolFromSmiles("C")])
            write(["CCO"])
    assert not sdf.exists()
    with pytest.raises(ValueError, match="format"):
        with molecule_writer(tmp_path / "x.pdb", "pdb"):
            pass
