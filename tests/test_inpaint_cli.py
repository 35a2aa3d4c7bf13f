"""``moldiff sample --fix``: fragments kept exactly (every sampler), linkers, growth rules, refusals."""

import numpy as np
import pytest

from moldiff.cli import main
from moldiff.fragments import load_fragment
from moldiff.io import MoleculeRecord, read_molecules, write_xyz
from moldiff.pipeline import load_model, to_rdkit
from moldiff.sampling.sampler import SAMPLERS

# a QM9-like fragment: acetaldehyde minus one hydrogen (C, C, O + 3 H), Å
SYMBOLS = ["C", "C", "O", "H", "H", "H"]
POS = np.array([[-1.2133, 0.0, 0.0142], [0.2864, 0.0001, -0.1033], [0.9604, -0.0004, 0.9011],
                [-1.6117, 0.8853, 0.5276], [-1.6119, -0.8836, 0.5309], [0.7383, 0.0002, -1.1112]])


@pytest.fixture(scope="module")
def model():
    return load_model("qm9")


def _write_sdf(path, symbols, pos, field=None):
    from rdkit import Chem

    mol = to_rdkit(symbols, pos)
    if field is not None:
        mol.SetProp("moldiff_grow", field)
    w = Chem.SDWriter(str(path))
    w.write(mol)
    w.close()
    return path


def _err_line(capsys):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fix_keeps_fragment_exactly(sampler, tmp_path):
    frag = _write_sdf(tmp_path / "frag.sdf", SYMBOLS, POS)
    out = tmp_path / "out.sdf"
    argv = ["sample", "--fix", str(frag), "--num", "3", "--steps", "4", "--sampler", sampler, "--out", str(out),
            "--no-evaluate"]
    assert main(argv) == 0
    ref = read_molecules(frag)[0]
    mols = read_molecules(out)
    assert len(mols) == 3
    for rec in mols:
        assert rec.num_atoms > len(SYMBOLS)
        assert rec.symbols[: len(SYMBOLS)] == ref.symbols
        assert np.array_equal(rec.pos[: len(SYMBOLS)], ref.pos)  # exactly, in the fragment's frame


def test_fix_xyz_resample_and_num_atoms(tmp_path):
    frag = tmp_path / "frag.xyz"
    write_xyz(frag, [(SYMBOLS, POS)])
    out = tmp_path / "out.xyz"
    assert main(["sample", "--fix", str(frag), "--num", "2", "--steps", "3", "--resample", "2",
                 "--num-atoms", "9", "--out", str(out)]) == 0
    for rec in read_molecules(out):
        assert rec.num_atoms == 9 and rec.symbols[:6] == SYMBOLS
        assert np.allclose(rec.pos[:6], POS, atol=1e-9)  # XYZ keeps 10 decimals


def test_linker_two_fragments_keep_relative_pose(tmp_path):
    a = _write_sdf(tmp_path / "a.sdf", SYMBOLS[:3], POS[:3])
    b = _write_sdf(tmp_path / "b.sdf", ["O"], POS[2:3] + np.array([[4.0, 0.0, 0.0]]))
    out = tmp_path / "link.sdf"
    assert main(["sample", "--fix", str(a), "--fix", str(b), "--num", "2", "--steps", "3", "--num-atoms", "10",
                 "--max-tries", "1", "--out", str(out), "--no-evaluate"]) == 0
    for rec in read_molecules(out):
        assert rec.symbols[:4] == ["C", "C", "O", "O"]
        assert np.array_equal(rec.pos[:3], read_molecules(a)[0].pos)
        assert np.array_equal(rec.pos[3:4], read_molecules(b)[0].pos)


def test_grow_modes(tmp_path, model):
    rec = MoleculeRecord("f", SYMBOLS, POS)
    f = load_fragment(rec, model.elements, "hydrogen-bearing")
    assert f.growable.tolist() == [True, True, False, False, False, False]  # the C's carry H, O and H's do not
    path = _write_sdf(tmp_path / "m.sdf", SYMBOLS, POS, field="2 3")
    assert load_fragment(path, model.elements, "marked").growable.tolist() == [False, True, True, False, False, False]
    with pytest.raises(ValueError, match="moldiff_grow"):
        load_fragment(_write_sdf(tmp_path / "n.sdf", SYMBOLS, POS), model.elements, "marked")


def test_grow_restriction_is_enforced_or_reported(tmp_path, model):
    from moldiff.evaluation.stability import bond_order_matrix
    from moldiff.fragments import inpaint_molecules

    path = _write_sdf(tmp_path / "m.sdf", SYMBOLS, POS, field="2")
    mols, out = inpaint_molecules(model, [path], 4, num_atoms=9, steps=4, grow="marked", max_tries=2)
    for (symbols, pos), ok in zip(mols, out.accepted.tolist(), strict=True):
        orders = bond_order_matrix(symbols, pos)
        blocked = [0, 2, 3, 4, 5]
        assert ok == (not (orders[blocked, 6:] > 0).any())


def _nan_sdf(path):
    text = (tmp := _write_sdf(path / "nan.sdf", SYMBOLS, POS)).read_text()
    lines = text.splitlines()
    lines[4] = "       nan" + lines[4][10:]
    tmp.write_text("\n".join(lines) + "\n")
    return tmp


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _write_sdf(p / "cl.sdf", ["C", "Cl"], POS[:2]), "not in the model's vocabulary"),
        (lambda p: _write_sdf(p / "big.sdf", ["C"] * 30, np.arange(90.0).reshape(30, 3) * 1.6),
         "at most 29 atoms"),
        (_nan_sdf, "fragment"),
        (lambda p: (p / "nan.xyz").write_text("1\n\nC nan 0 0\n") and p / "nan.xyz", "non-finite"),
        (lambda p: (p / "junk.sdf").write_text("not a molecule\n") and p / "junk.sdf", "not an SDF file"),
        (lambda p: p / "missing.sdf", "no such file"),
        (lambda p: (p / "two.xyz").write_text("1\n\nC 0 0 0\n1\n\nO 0 0 0\n") and p / "two.xyz", "one per --fix"),
    ],
)
def test_bad_fragment_refused_exit_2_no_output(make, message, tmp_path, capsys):
    frag = make(tmp_path)
    out = tmp_path / "out.sdf"
    assert main(["sample", "--fix", str(frag), "--num", "2", "--steps", "2", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert line.startswith("moldiff: error:") and message in line
    assert not out.exists()


def test_num_atoms_not_larger_than_fragment_refused(tmp_path, capsys):
    frag = _write_sdf(tmp_path / "f.sdf", SYMBOLS, POS)
    out = tmp_path / "out.sdf"
    assert main(["sample", "--fix", str(frag), "--num-atoms", "6", "--steps", "2", "--out", str(out)]) == 2
    assert "larger than the fragment" in _err_line(capsys)
    assert not out.exists()


def test_fix_with_relax_keeps_fragment(tmp_path):
    frag = _write_sdf(tmp_path / "f.sdf", SYMBOLS, POS)
    out = tmp_path / "out.sdf"
    assert main(["sample", "--fix", str(frag), "--num", "2", "--steps", "4", "--relax", "mmff", "--out",
                 str(out)]) == 0
    ref = read_molecules(frag)[0]
    for rec in read_molecules(out):
        assert np.array_equal(rec.pos[:6], ref.pos)
