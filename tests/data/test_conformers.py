"""`moldiff data build` / `data merge`: SMILES -> conformer dataset, rejects, resume, shards, GEOM pickles."""

import gzip
import pickle

import numpy as np
import pytest

from moldiff.cli import main
from moldiff.data import conformers as conf
from moldiff.data import get_split, load_dataset, load_stats
from moldiff.data.conformers import BuildOptions, build_dataset, merge_build, read_smiles

Chem = pytest.importorskip("rdkit.Chem")

GOOD = ["CCO", "c1ccccc1O", "C[N+](C)(C)CC(=O)[O-]", "CC(=O)Nc1ccc(Cl)cc1", "OCCN.[Na+].[Cl-]", "CCO"]
BAD = ["C1CC", "not_a_smiles", "C1#CC1", "C[Si](C)(C)C"]  # unclosed ring, garbage, unembeddable, element
LINES = ["smiles", "CCO", "C1CC", "c1ccccc1O", "not_a_smiles", "C[N+](C)(C)CC(=O)[O-]", "C1#CC1",
         "CC(=O)Nc1ccc(Cl)cc1", "C[Si](C)(C)C", "OCCN.[Na+].[Cl-]", "CCO"]


def _arrays_equal(a, b):
    for key in ("pos", "atomic_numbers", "ptr", "index", "names", "smiles", "bond_index", "bond_type", "bond_ptr",
                "formal_charge"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.elements == b.elements and sorted(a.properties) == sorted(b.properties)
    for k in a.properties:
        np.testing.assert_array_equal(a.properties[k], b.properties[k])


@pytest.fixture
def smiles_file(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_read_smiles_formats(tmp_path):
    (tmp_path / "a.csv").write_text("id,SMILES\n1,CCO\n2,c1ccccc1\n")
    assert read_smiles(tmp_path / "a.csv") == ["CCO", "c1ccccc1"]
    (tmp_path / "b.csv").write_text("mol,x\nCCO,1\n")
    assert read_smiles(tmp_path / "b.csv", column="mol") == ["CCO"]
    with pytest.raises(ValueError, match="no column"):
        read_smiles(tmp_path / "b.csv", column="smi")
    with gzip.open(tmp_path / "c.smi.gz", "wt") as fh:
        fh.write("CCO ethanol\n\nCCN\n")
    assert read_smiles(tmp_path / "c.smi.gz") == ["CCO", "CCN"]


def test_build_counts_rejects_and_dataset(tmp_path, smiles_file, capsys):
    code = main(["data", "build", "--smiles", str(smiles_file), "--name", "mini", "--root", str(tmp_path),
                 "--chunk-size", "4", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "10 SMILES -> 5 molecules, 5 conformers" in out.out and "5 rejected" in out.out
    arrays = load_dataset("mini", root=tmp_path)
    assert arrays.has_bonds and arrays.formal_charge is not None and arrays.num_molecules == 5
    assert arrays.index.tolist() == [0, 2, 4, 6, 8]  # data rows (header skipped)
    assert set(arrays.elements) == {"H", "C", "N", "O", "Cl"}  # salt stripped to its largest fragment
    assert arrays.formal_charge.tolist().count(1) == 1 and arrays.formal_charge.tolist().count(-1) == 1
    for k, smi in enumerate(arrays.smiles):  # the stored graph is the SMILES, hydrogens explicit
        from moldiff.io import bonded_mol

        symbols, pos = arrays.molecule(k)
        lo, hi = arrays.ptr[k], arrays.ptr[k + 1]
        mol = bonded_mol(symbols, pos, arrays.bonds(k), arrays.formal_charge[lo:hi])
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == smi
        d = np.linalg.norm(pos[[i for i, _, _ in arrays.bonds(k)]] - pos[[j for _, j, _ in arrays.bonds(k)]], axis=1)
        assert d.min() > 0.9 and d.max() < 1.9  # MMFF geometry: bonded atoms at bond lengths
    rejects = (tmp_path / "mini" / "processed" / "rejects.tsv").read_text().splitlines()
    assert rejects[0] == "row\tsmiles\treason"
    reasons = {int(r.split("\t")[0]): r.split("\t")[2] for r in rejects[1:]}
    assert reasons[1].startswith("invalid SMILES") and reasons[3].startswith("invalid SMILES")
    assert reasons[5] == "embedding failed (ETKDG)" and reasons[7] == "element filter: Si"
    assert reasons[9] == "duplicate of row 0"
    stats = load_stats("mini", root=tmp_path)
    assert stats["provenance"]["reject_reasons"] == {"duplicate": 1, "element filter": 1,
                                                     "embedding failed (ETKDG)": 1, "invalid SMILES": 2}
    rows = sorted(np.concatenate([get_split(s, "mini", root=tmp_path) for s in ("train", "valid", "test")]).tolist())
    assert rows == list(range(5))
    with gzip.open(tmp_path / "mini" / "train_smiles.txt.gz", "rt") as fh:
        train = fh.read().split()
    assert len(train) == len(get_split("train", "mini", root=tmp_path)) and train == sorted(train)
    assert main(["data", "build", "--smiles", str(smiles_file), "--name", "mini", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moldiff: error:") and "already exists" in err and len(err.strip().splitlines()) == 1


def test_conformers_and_filters(tmp_path):
    opts = BuildOptions(num_conformers=3, max_heavy_atoms=8, chunk_size=10)
    out = build_dataset("c3", smiles=["CCO", "CC(=O)Nc1ccc(Cl)cc1", "CCCC"], options=opts, root=tmp_path,
                        progress=False)
    assert out["molecules"] == 2 and out["conformers"] == 6 and out["reject_reasons"] == {"size filter": 1}
    arrays = load_dataset("c3", root=tmp_path)
    assert arrays.properties["conformer"].tolist() == [0, 1, 2, 0, 1, 2]
    for split in ("train", "valid", "test"):  # all conformers of a molecule in one split
        rows = get_split(split, "c3", root=tmp_path)
        for other in ("train", "valid", "test"):
            if other != split:
                assert not set(arrays.index[rows]) & set(arrays.index[get_split(other, "c3", root=tmp_path)])


def test_resume_after_kill_skips_finished_chunks(tmp_path, smiles_file, monkeypatch):
    data = read_smiles(smiles_file)
    opts = BuildOptions(chunk_size=3)
    written = []
    real = conf._write_chunk

    def dying(work, c, *a):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while working on the third chunk
        written.append(c)
        real(work, c, *a)

    monkeypatch.setattr(conf, "_write_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("res", smiles=data, options=opts, root=tmp_path, progress=False)
    assert not (tmp_path / "res").exists() and written == [0, 1]
    with pytest.raises(ValueError, match="other options"):  # a resume must use the same arguments
        build_dataset("res", smiles=data, options=BuildOptions(chunk_size=2), root=tmp_path, progress=False)
    monkeypatch.setattr(conf, "_write_chunk", real)
    seen = []
    real_embed = conf.embed_smiles
    monkeypatch.setattr(conf, "embed_smiles", lambda row, *a: seen.append(row) or real_embed(row, *a))
    out = build_dataset("res", smiles=data, options=opts, root=tmp_path, progress=False)
    assert out["chunks_skipped"] == 2 and out["chunks_done"] == 2 and seen == [6, 7, 8, 9]
    build_dataset("one", smiles=data, options=opts, root=tmp_path, progress=False)
    _arrays_equal(load_dataset("res", root=tmp_path), load_dataset("one", root=tmp_path))
    assert merge_build("res", root=tmp_path, overwrite=True)[1]["molecules"] == 5  # merging again is harmless


def test_two_shards_merge_to_one_run(tmp_path, smiles_file, capsys):
    common = ["--smiles", str(smiles_file), "--root", str(tmp_path), "--chunk-size", "2", "--no-progress"]
    assert main(["data", "build", *common, "--name", "whole"]) == 0
    assert main(["data", "build", *common, "--name", "sh", "--shard", "1/2"]) == 0
    assert not (tmp_path / "sh").exists()
    assert main(["data", "merge", "sh", "--root", str(tmp_path)]) == 2  # shard 2 missing
    assert "not built yet" in capsys.readouterr().err
    assert main(["data", "build", *common, "--name", "sh", "--shard", "2/2"]) == 0
    assert main(["data", "merge", "sh", "--root", str(tmp_path)]) == 0
    _arrays_equal(load_dataset("whole", root=tmp_path), load_dataset("sh", root=tmp_path))
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(get_split(split, "whole", root=tmp_path), get_split(split, "sh", root=tmp_path))
    assert ((tmp_path / "whole" / "processed" / "rejects.tsv").read_text()
            == (tmp_path / "sh" / "processed" / "rejects.tsv").read_text())
    assert main(["data", "build", *common, "--name", "x", "--shard", "3/2"]) == 2
    assert "moldiff: error: --shard k/N needs 1 <= k <= N" in capsys.readouterr().err
    assert main(["data", "build", "--smiles", str(tmp_path / "absent.smi"), "--name", "y"]) == 2
    with pytest.raises(SystemExit):  # one source only (argparse: exit code 2)
        main(["data", "build", "--moses", "train", "--smiles", str(smiles_file), "--name", "y"])


def test_sample_rows_seeded_uniform_nested():
    a = conf.sample_rows(1000, 100, seed=3)
    assert a.tolist() == conf.sample_rows(1000, 100, seed=3).tolist()  # same seed, same subset
    assert a.tolist() != conf.sample_rows(1000, 100, seed=4).tolist()
    assert len(set(a.tolist())) == 100 and a.tolist() == sorted(a.tolist()) and 0 <= a.min() and a.max() < 1000
    assert set(a.tolist()) <= set(conf.sample_rows(1000, 300, seed=3).tolist())  # nested
    assert a.tolist() != list(range(100))  # not a prefix
    big = conf.sample_rows(100_000, 10_000, seed=0)  # spread over the whole file (a prefix would have max 9,999)
    assert np.histogram(big, bins=10, range=(0, 100_000))[0].min() > 900
    assert conf.sample_rows(5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="source has 5 rows"):
        conf.sample_rows(5, 6)


def test_sampled_build_reproducible_and_shards_merge(tmp_path, smiles_file, capsys):
    common = ["--smiles", str(smiles_file), "--root", str(tmp_path), "--chunk-size", "2", "--no-progress",
              "--sample", "6", "--seed", "5"]
    assert main(["data", "build", *common, "--name", "whole"]) == 0
    assert "6 SMILES -> " in capsys.readouterr().out
    chosen = conf.sample_rows(10, 6, seed=5).tolist()
    whole = load_dataset("whole", root=tmp_path)
    assert set(whole.index.tolist()) <= set(chosen)  # molecules keep their source row numbers
    rejects = (tmp_path / "whole" / "processed" / "rejects.tsv").read_text().splitlines()[1:]
    assert sorted(set(whole.index.tolist()) | {int(r.split("\t")[0]) for r in rejects}) == chosen
    assert main(["data", "build", *common, "--name", "again"]) == 0  # the same seed gives the same dataset
    _arrays_equal(whole, load_dataset("again", root=tmp_path))
    for k in ("1/3", "2/3", "3/3"):
        assert main(["data", "build", *common, "--name", "sh", "--shard", k]) == 0
    assert main(["data", "merge", "sh", "--root", str(tmp_path)]) == 0
    _arrays_equal(whole, load_dataset("sh", root=tmp_path))
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(get_split(split, "whole", root=tmp_path), get_split(split, "sh", root=tmp_path))
    assert ((tmp_path / "whole" / "processed" / "rejects.tsv").read_text()
            == (tmp_path / "sh" / "processed" / "rejects.tsv").read_text())
    # a molecule's conformer does not depend on being sampled: same row, same seed, same coordinates
    assert main(["data", "build", *common[:-4], "--seed", "5", "--name", "full"]) == 0
    full = load_dataset("full", root=tmp_path)
    for k, row in enumerate(whole.index.tolist()):
        j = full.index.tolist().index(row)
        np.testing.assert_array_equal(whole.molecule(k)[1], full.molecule(j)[1])
    capsys.readouterr()
    assert main(["data", "build", *common[:-4], "--sample", "11", "--name", "big"]) == 2
    assert "--sample 11: the source has 10 rows" in capsys.readouterr().err and not (tmp_path / "big").exists()


def test_sampled_build_resumes_only_with_the_same_sample(tmp_path, smiles_file, monkeypatch):
    data = read_smiles(smiles_file)
    opts = BuildOptions(chunk_size=2, seed=1)
    real = conf._write_chunk
    written = []

    def dying(work, c, *a):
        if len(written) == 1:
            raise KeyboardInterrupt
        written.append(c)
        real(work, c, *a)

    monkeypatch.setattr(conf, "_write_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("res", smiles=data, sample=5, options=opts, root=tmp_path, progress=False)
    monkeypatch.setattr(conf, "_write_chunk", real)
    with pytest.raises(ValueError, match="other source"):  # another subset is another build
        build_dataset("res", smiles=data, sample=4, options=opts, root=tmp_path, progress=False)
    out = build_dataset("res", smiles=data, sample=5, options=opts, root=tmp_path, progress=False)
    assert out["chunks_skipped"] == 1 and out["chunks_done"] == 2
    build_dataset("one", smiles=data, sample=5, options=opts, root=tmp_path, progress=False)
    _arrays_equal(load_dataset("res", root=tmp_path), load_dataset("one", root=tmp_path))


def _geom_record(smiles, n_conf, seed=0):
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    cids = AllChem.EmbedMultipleConfs(mol, n_conf, randomSeed=seed)
    confs = []
    for k, cid in enumerate(cids):
        m = Chem.Mol(mol, confId=cid)
        one = Chem.Mol(m)
        one.RemoveAllConformers()
        one.AddConformer(Chem.Conformer(m.GetConformer(cid)), assignId=True)
        confs.append({"rd_mol": one, "boltzmannweight": [0.2, 0.7, 0.1][k], "totalenergy": -10.0 - k,
                      "geom_id": k})
    return {"smiles": smiles, "conformers": confs, "charge": 0, "uniqueconfs": n_conf}


def test_geom_pickles(tmp_path, capsys):
    folder = tmp_path / "drugs"
    folder.mkdir()
    for k, smi in enumerate(["CC(=O)Oc1ccccc1C(=O)O", "C[NH+](C)CCC(=O)[O-]", "CC[Si](C)C"]):
        with open(folder / f"mol{k}.pickle", "wb") as fh:
            pickle.dump(_geom_record(smi, 3, seed=k), fh)
    (folder / "broken.pickle").write_bytes(b"not a pickle")
    code = main(["data", "build", "--geom", str(folder), "--name", "geom", "--root", str(tmp_path),
                 "--conformers", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "4 SMILES -> 2 molecules, 4 conformers" in out
    arrays = load_dataset("geom", root=tmp_path)
    assert arrays.properties["boltzmann_weight"].tolist() == pytest.approx([0.7, 0.2, 0.7, 0.2])
    assert arrays.properties["energy"][0] == pytest.approx(-11.0 * 627.509474)
    assert arrays.formal_charge.tolist().count(-1) == 2 and arrays.has_bonds  # 2 conformers
    assert set(arrays.smiles.tolist()) == {"CC(=O)Oc1ccccc1C(=O)O", "C[NH+](C)CCC(=O)[O-]"}
    rejects = (tmp_path / "geom" / "processed" / "rejects.tsv").read_text()
    assert "unreadable pickle" in rejects and "element filter: Si" in rejects


def test_worker_processes_give_the_same_dataset(tmp_path):
    data = ["CCO", "c1ccccc1O", "C1#CC1", "CC(=O)Nc1ccc(Cl)cc1", "CCN"]
    opts = BuildOptions(chunk_size=2)
    build_dataset("w1", smiles=data, options=opts, root=tmp_path, progress=False)
    build_dataset("w2", smiles=data, options=opts, root=tmp_path, progress=False, workers=2)
    _arrays_equal(load_dataset("w1", root=tmp_path), load_dataset("w2", root=tmp_path))
