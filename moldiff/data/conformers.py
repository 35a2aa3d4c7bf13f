"""3D datasets from SMILES: RDKit conformers (ETKDG, then MMFF), resumable, shardable, mergeable.

``moldiff data build --smiles FILE --name NAME`` (or ``--moses train``) turns SMILES into a stored
dataset (:class:`~moldiff.data.registry.StoredDataset`) with hydrogens, bonds and formal charges:

1. **Read** the SMILES (one per line, or a CSV column; an optional header is skipped) and number
   the data rows ``0..n-1``; ``--limit`` keeps the first ``n`` (a prefix: MOSES's train file is not
   shuffled, so a prefix is not representative); ``--sample n`` keeps a seeded random subset of
   ``n`` rows (:func:`sample_rows`: ``--seed``; chosen here, before chunking and sharding, so every
   shard sees the same subset; rows keep their source numbers). Use ``--sample`` for training sets.
2. **Chunk** the rows (``--chunk-size``): chunk ``c`` is rows ``[c·size, (c+1)·size)``. Shard
   ``k/N`` builds the chunks with ``c % N == k − 1``. Every finished chunk is written atomically
   to ``<root>/.build/NAME/chunks/`` (molecules + rejects), so a rerun after a kill skips it.
3. **Per molecule** (in ``--workers`` processes): parse; keep the largest fragment; element and
   size filters; add hydrogens; ``--conformers`` ETKDGv3 embeddings (seed from ``(seed, row)``,
   so the result does not depend on the shard or process); MMFF94 optimisation; bonds kekulised
   (codes 1, 2, 3) and formal charges kept. Every failure is a reject ``(row, SMILES, reason)``;
   nothing stops the run.
4. **Merge** (automatic after a one-process build, ``moldiff data merge NAME`` after sharded
   builds): chunks joined in row order, duplicates (same canonical SMILES) dropped keeping the
   first row, split 80/10/10 by molecule (all conformers of a molecule in one split), written with
   ``processed/rejects.tsv`` and ``train_smiles.txt.gz`` (the training split's canonical SMILES
   without stereo, for novelty). A sharded build merges to the same arrays as a one-process build.

GEOM-Drugs pickles go through the same merge: see :mod:`moldiff.data.geom`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.util
import io
import json
import math
import multiprocessing
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moldiff.constants import ATOMIC_NUMBERS
from moldiff.data.arrays import MoleculeArrays

#: Elements kept by default: the organic subset of drug-like sets (MOSES uses C N O F S Cl Br H).
DRUG_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
MOSES_SETS: tuple[str, ...] = ("train", "test", "test_scaffolds")
BUILD_VERSION = 1
_REJECT_HEADER = "row\tsmiles\treason\n"


@dataclass(frozen=True)
class BuildOptions:
    """What every molecule goes through (stored in ``build.json``; a resume must use the same).

    Attributes:
        num_conformers: conformers per molecule (each is one dataset row).
        elements: allowed elements (a molecule with any other is rejected).
        min_heavy_atoms: reject molecules with fewer heavy atoms.
        max_heavy_atoms: reject molecules with more heavy atoms (``None``: no limit).
        max_atoms: reject molecules with more atoms including hydrogens (``None``: no limit).
        seed: base seed of the embeddings and of the split.
        mmff_iters: MMFF optimisation iterations.
        chunk_size: molecules per chunk (the unit of resumption and sharding).
        embed_timeout: seconds one ETKDG attempt may take (a pathological molecule becomes a reject
            instead of stalling a shard).
    """

    num_conformers: int = 1
    elements: tuple[str, ...] = DRUG_ELEMENTS
    min_heavy_atoms: int = 1
    max_heavy_atoms: int | None = None
    max_atoms: int | None = None
    seed: int = 0
    mmff_iters: int = 2000
    chunk_size: int = 1000
    embed_timeout: int = 60

    def __post_init__(self) -> None:
        if self.num_conformers < 1 or self.chunk_size < 1 or self.mmff_iters < 0 or self.min_heavy_atoms < 0:
            raise ValueError("num_conformers and chunk_size must be positive, mmff_iters and min_heavy_atoms >= 0")
        unknown = sorted(set(self.elements) - set(ATOMIC_NUMBERS))
        if unknown:
            raise ValueError(f"unknown element(s) {unknown}; known: {', '.join(ATOMIC_NUMBERS)}")
        if self.max_heavy_atoms is not None and self.max_heavy_atoms < self.min_heavy_atoms:
            raise ValueError("max_heavy_atoms is below min_heavy_atoms")


# ============================================================================ sources
def moses_path(name: str) -> Path:
    """``moses/dataset/data/<name>.csv.gz`` of the installed ``molsets`` package (never imported).

    Raises:
        ValueError: unknown set name.
        FileNotFoundError: ``molsets`` is not installed.
    """
    if name not in MOSES_SETS:
        raise ValueError(f"unknown MOSES set {name!r}; choose one of {', '.join(MOSES_SETS)}")
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MOSES sets need the molsets package: pip install --no-deps molsets "
                                "(or pip install 'moldiff[drugs]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset" / "data" / f"{name}.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"molsets is installed but lacks {path}")
    return path


def read_smiles(path: str | Path, column: str | None = None) -> list[str]:
    """SMILES of a text or CSV file (``.gz`` allowed), one per data row, in file order.

    A line whose first field is ``smiles`` (any case) or ``column`` is a header and skipped. A CSV
    (first line with a comma) uses ``column`` (default: a column named ``smiles`` in any case,
    else the first); a text file uses the first whitespace-separated field. Blank lines are
    skipped. Nothing is parsed here: invalid SMILES become rejects later.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``column`` is not in the CSV header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        lines = [ln.rstrip("\r\n") for ln in fh]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return []
    first = lines[0]
    if "," in first:
        import csv

        rows = list(csv.reader(lines))
        header = [h.strip() for h in rows[0]]
        lower = [h.lower() for h in header]
        if column is not None:
            if column not in header:
                raise ValueError(f"{path}: no column {column!r} in the header ({', '.join(header)})")
            col = header.index(column)
        else:
            col = lower.index("smiles") if "smiles" in lower else 0
        has_header = column is not None or "smiles" in lower
        return [r[col].strip() if col < len(r) else "" for r in rows[1 if has_header else 0 :]]
    fields = [ln.split()[0] if ln.split() else "" for ln in lines]
    if fields[0].lower() == "smiles" or (column is not None and fields[0] == column):
        fields = fields[1:]
    return fields


def sample_rows(num_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """A seeded random subset of ``n`` of the rows ``0..num_rows-1``, in increasing order.

    Every row gets a 64-bit key from a fixed integer hash (SplitMix64's finaliser) of ``(seed, row)``
    and the ``n`` rows with the smallest keys are kept. The choice depends on nothing but
    ``(num_rows, n, seed)``: not on the NumPy version, the platform or the shard, so the shards of
    a cluster build (even with different software) agree; a larger ``n`` with the same seed gives
    a superset (the samples are nested).

    Raises:
        ValueError: ``n`` is not between 1 and ``num_rows``.

    >>> sample_rows(10, 3, seed=0).tolist() == sample_rows(10, 3, seed=0).tolist()
    True
    >>> set(sample_rows(10, 3, seed=1).tolist()) <= set(sample_rows(10, 6, seed=1).tolist())
    True
    """
    if not 1 <= n <= num_rows:
        raise ValueError(f"--sample {n}: the source has {num_rows} rows; sample between 1 and {num_rows}")
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = np.arange(num_rows, dtype=np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 1) & int(mask))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    keep = np.argsort(z, kind="stable")[:n]
    return np.sort(keep).astype(np.int64)


# ============================================================================ one molecule
@dataclass
class EmbeddedMolecule:
    """One molecule's conformers, as returned by :func:`embed_smiles`."""

    row: int
    smiles: str  # canonical isomeric SMILES (heavy atoms)
    atomic_numbers: list[int]
    formal_charges: list[int]
    bonds: list[tuple[int, int, int]]
    conformers: np.ndarray  # [C, n, 3] float32
    energies: list[float]  # MMFF energy of every conformer, kcal/mol
    extra: dict[str, list[float]] = field(default_factory=dict)  # more per-conformer properties


_KEKULE_CODES = {1.0: 1, 2.0: 2, 3.0: 3}


def embed_smiles(row: int, smiles: str, opts: BuildOptions) -> EmbeddedMolecule | tuple[int, str, str]:
    """Conformers of one SMILES, or the reject ``(row, smiles, reason)``; never raises for bad input."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        try:
            return _embed(row, smiles, opts, Chem, AllChem)
        except _Reject as exc:
            return (row, smiles, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad molecule must not stop a build
            return (row, smiles, f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}")


class _Reject(Exception):
    pass


def _embed(row: int, smiles: str, opts: BuildOptions, Chem: Any, AllChem: Any) -> EmbeddedMolecule:  # noqa: N803
    if not smiles:
        raise _Reject("invalid SMILES: empty")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise _Reject("invalid SMILES: RDKit cannot parse or sanitise it")
    frags = Chem.GetMolFrags(mol, asMols=True)
    if len(frags) > 1:  # salts, counter-ions: keep the largest fragment
        mol = max(frags, key=lambda m: (m.GetNumHeavyAtoms(), m.GetNumAtoms()))
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(opts.elements))
    if bad:
        raise _Reject(f"element filter: {','.join(bad)}")
    heavy = mol.GetNumHeavyAtoms()
    if heavy < opts.min_heavy_atoms:
        raise _Reject(f"size filter: {heavy} heavy atoms < {opts.min_heavy_atoms}")
    if opts.max_heavy_atoms is not None and heavy > opts.max_heavy_atoms:
        raise _Reject(f"size filter: {heavy} heavy atoms > {opts.max_heavy_atoms}")
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        raise _Reject("radical")
    canonical = Chem.MolToSmiles(mol)
    mol = Chem.AddHs(mol)
    if opts.max_atoms is not None and mol.GetNumAtoms() > opts.max_atoms:
        raise _Reject(f"size filter: {mol.GetNumAtoms()} atoms > {opts.max_atoms}")
    params = AllChem.ETKDGv3()
    params.randomSeed = (opts.seed * 1_000_003 + row) % 2_147_483_647
    params.numThreads = 1
    params.timeout = opts.embed_timeout
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=opts.num_conformers, params=params))
    if not cids:  # the usual fallback for hard cases (macrocycles, cages)
        params.useRandomCoords = True
        cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=opts.num_conformers, params=params))
    if not cids:
        raise _Reject("embedding failed (ETKDG)")
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        raise _Reject("no MMFF94 parameters")
    results = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=opts.mmff_iters)
    energies = [float(e) for _, e in results]
    if not all(math.isfinite(e) for e in energies):
        raise _Reject("MMFF energy not finite")
    Chem.Kekulize(mol, clearAromaticFlags=True)
    bonds = []
    for b in mol.GetBonds():
        order = b.GetBondTypeAsDouble()
        if order not in _KEKULE_CODES:
            raise _Reject(f"unsupported bond type {b.GetBondType()}")
        i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        bonds.append((i, j, _KEKULE_CODES[order]))
    confs = np.stack([mol.GetConformer(c).GetPositions() for c in cids]).astype(np.float32)
    if not np.all(np.isfinite(confs)):
        raise _Reject("non-finite coordinates")
    return EmbeddedMolecule(
        row=row, smiles=canonical, atomic_numbers=[a.GetAtomicNum() for a in mol.GetAtoms()],
        formal_charges=[a.GetFormalCharge() for a in mol.GetAtoms()], bonds=bonds, conformers=confs,
        energies=energies,
    )


def _embed_task(task: tuple[int, str, BuildOptions]) -> EmbeddedMolecule | tuple[int, str, str]:
    return embed_smiles(*task)


def molecules_to_arrays(molecules: Sequence[EmbeddedMolecule], prefix: str = "mol") -> MoleculeArrays:
    """One row per conformer (name ``<prefix>_<row>_<conformer>``, index = input row).

    Properties: ``energy`` (MMFF94, kcal/mol, or GEOM's) and ``conformer`` (0-based number).
    Extra per-conformer properties (e.g. GEOM's ``boltzmann_weight``) are read from
    ``molecule.extra[key]`` when present.
    """
    from moldiff.constants import SYMBOLS

    mols, names, bonds, charges, smiles, index = [], [], [], [], [], []
    props: dict[str, list[float]] = {"energy": [], "conformer": []}
    extra_keys = sorted(molecules[0].extra) if molecules else []
    for k in extra_keys:
        props[k] = []
    for m in molecules:
        symbols = [SYMBOLS[z] for z in m.atomic_numbers]
        for c, pos in enumerate(m.conformers):
            mols.append((symbols, pos))
            names.append(f"{prefix}_{m.row}_{c}")
            bonds.append(m.bonds)
            charges.append(m.formal_charges)
            smiles.append(m.smiles)
            index.append(m.row)
            props["energy"].append(m.energies[c])
            props["conformer"].append(float(c))
            for k in extra_keys:
                props[k].append(float(m.extra[k][c]))
    return MoleculeArrays.from_molecules(mols, names=names, properties=props, bonds=bonds,
                                         formal_charges=charges, smiles=smiles, index=index)


# ============================================================================ build directory
def build_dir(name: str, root: str | Path | None = None) -> Path:
    """``<root>/.build/<name>``: the chunks of a build in progress (kept after the merge)."""
    from moldiff.data.qm9 import data_root

    return Path(root if root is not None else data_root()) / ".build" / name


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"k/N"`` (1-based) -> ``(k, N)``; ``None`` -> ``(1, 1)``.

    Raises:
        ValueError: not ``k/N`` with ``1 <= k <= N``.

    >>> parse_shard("2/4")
    (2, 4)
    """
    if text is None:
        return 1, 1
    try:
        k, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be k/N, e.g. 1/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard k/N needs 1 <= k <= N, got {text!r}")
    return k, n


def _chunk_path(work: Path, c: int) -> Path:
    return work / "chunks" / f"chunk_{c:07d}.npz"


def _write_chunk(work: Path, c: int, molecules: list[EmbeddedMolecule], rejects: list[tuple[int, str, str]]) -> None:
    """Rejects first, then the molecules; the ``.npz`` appearing marks the chunk done."""
    from moldiff.io import atomic_write

    with atomic_write(_chunk_path(work, c).with_suffix(".rejects.tsv")) as fh:
        fh.write(_REJECT_HEADER + "".join(f"{r}\t{_clean(s)}\t{why}\n" for r, s, why in sorted(rejects)))
    molecules_to_arrays(molecules).save(_chunk_path(work, c))


def _clean(smiles: str) -> str:
    return " ".join(smiles.split()) or "-"


def _manifest(source: str, num_inputs: int, opts: BuildOptions, name: str) -> dict[str, Any]:
    return {"version": BUILD_VERSION, "name": name, "source": source, "num_inputs": num_inputs,
            "num_chunks": max(1, math.ceil(num_inputs / opts.chunk_size)), "options": dataclasses.asdict(opts)}


def _check_manifest(work: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    from moldiff.io import atomic_write

    path = work / "build.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        old["options"]["elements"] = tuple(old["options"]["elements"])
        new = {**manifest, "options": dict(manifest["options"], elements=tuple(manifest["options"]["elements"]))}
        diff = [k for k in ("source", "num_inputs", "options") if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"{work} holds a build with other {', '.join(diff)}: use the same arguments to "
                             "resume, or --overwrite to start again")
        return
    if overwrite and work.exists():
        import shutil

        shutil.rmtree(work)
    with atomic_write(path) as fh:
        json.dump(manifest, fh, indent=1)


def build_chunks(
    smiles: Sequence[str],
    name: str,
    opts: BuildOptions,
    *,
    source: str,
    root: str | Path | None = None,
    shard: tuple[int, int] = (1, 1),
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, int]:
    """Build this shard's missing chunks into :func:`build_dir` (see the module docstring).

    ``rows[i]`` is the source row number of ``smiles[i]`` (default ``i``): it names the molecule,
    seeds its embedding and numbers its rejects, so a sampled build keeps the source's numbering.

    Returns:
        ``{"chunks_done", "chunks_skipped", "chunks_total", "molecules", "rejects"}`` of this run.
    """
    if rows is not None and len(rows) != len(smiles):
        raise ValueError(f"rows has {len(rows)} entries for {len(smiles)} SMILES")
    work = build_dir(name, root)
    manifest = _manifest(source, len(smiles), opts, name)
    _check_manifest(work, manifest, overwrite)
    k, n = shard
    mine = [c for c in range(manifest["num_chunks"]) if c % n == k - 1]
    todo = [c for c in mine if not _chunk_path(work, c).is_file()]
    size = opts.chunk_size
    spans = {c: range(c * size, min((c + 1) * size, len(smiles))) for c in todo}
    total = sum(len(s) for s in spans.values())
    if log is not None and len(todo) < len(mine):
        log(f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks already built in {work}")
    tasks = ((i if rows is None else int(rows[i]), smiles[i], opts) for c in todo for i in spans[c])
    stats = Counter(chunks_skipped=len(mine) - len(todo), chunks_total=len(mine))
    with _results(tasks, workers) as results, _bar(total, progress, name) as bar:
        for c in todo:
            molecules, rejects = [], []
            for _ in spans[c]:
                res = next(results)
                (molecules if isinstance(res, EmbeddedMolecule) else rejects).append(res)
                bar.update(1)
            _write_chunk(work, c, molecules, rejects)
            stats.update(chunks_done=1, molecules=len(molecules), rejects=len(rejects))
    return {key: int(stats[key]) for key in ("chunks_done", "chunks_skipped", "chunks_total", "molecules", "rejects")}


@contextlib.contextmanager
def _results(tasks: Iterator[tuple[int, str, BuildOptions]], workers: int) -> Iterator[Iterator[Any]]:
    """Results of ``embed_smiles`` in task order, in this process or a pool of ``workers``."""
    if workers <= 1:
        yield (_embed_task(t) for t in tasks)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ctx.Pool(workers) as pool:
        yield pool.imap(_embed_task, tasks, chunksize=4)


@contextlib.contextmanager
def _bar(total: int, progress: bool, name: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"building {name}", unit="mol", disable=not progress or total == 0,
               file=sys.stderr, smoothing=0.05)
    try:
        yield bar
    finally:
        bar.close()


# ============================================================================ merge
def _read_rejects(path: Path) -> list[tuple[int, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    out = []
    for ln in lines:
        row, smi, why = ln.split("\t", 2)
        out.append((int(row), smi, why))
    return out


def finalize_dataset(
    arrays: MoleculeArrays,
    rejects: list[tuple[int, str, str]],
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Deduplicate by SMILES (first row wins), split by molecule, write the dataset; return (dir, report).

    ``arrays`` holds one row per conformer; rows of one molecule share ``index`` (the input row)
    and ``smiles``.
    """
    from moldiff.data.datasets import write_dataset
    from moldiff.data.splits import random_split
    from moldiff.io import atomic_write

    smiles = arrays.smiles.tolist() if arrays.smiles is not None else [str(i) for i in arrays.index]
    first: dict[str, int] = {}
    keep = np.zeros(arrays.num_molecules, dtype=bool)
    rejects = list(rejects)
    reported: set[int] = set()
    for r, (smi, row) in enumerate(zip(smiles, arrays.index.tolist(), strict=True)):
        owner = first.setdefault(smi, row)
        keep[r] = owner == row
        if owner != row and row not in reported:
            reported.add(row)
            rejects.append((row, smi, f"duplicate of row {owner}"))
    arrays = arrays.subset(np.flatnonzero(keep))
    if arrays.num_molecules == 0:
        raise ValueError(f"no molecule of {name!r} survived ({len(rejects)} rejected; see the reasons with "
                         "--limit on a few rows)")
    # split by molecule: every conformer of one SMILES lands in the same split
    keys, group = np.unique(arrays.index, return_inverse=True)
    mol_split = random_split(len(keys), seed=seed)
    splits = {k: np.flatnonzero(np.isin(group, v)).astype(np.int64) for k, v in mol_split.items()}
    rejects.sort()
    reasons = Counter(why.split(":")[0] if not why.startswith("duplicate") else "duplicate" for _, _, why in rejects)
    report = {"molecules": int(len(keys)), "conformers": int(arrays.num_molecules), "rejects": len(rejects),
              "reject_reasons": dict(sorted(reasons.items()))}
    train_smiles = sorted({_flat_smiles(s) for s in np.asarray(arrays.smiles)[splits["train"]].tolist()})

    def write_rejects(path: Path) -> None:
        with atomic_write(path) as fh:
            fh.write(_REJECT_HEADER + "".join(f"{r}\t{_clean(s)}\t{why}\n" for r, s, why in rejects))

    def write_train(path: Path) -> None:
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write("".join(s + "\n" for s in train_smiles).encode())
        with atomic_write(path, mode="wb") as fh:
            fh.write(buf.getvalue())

    target = write_dataset(
        arrays, name, splits, root=root, overwrite=overwrite, seed=seed,
        provenance={"dataset": name, **(provenance or {}), **report,
                    "splits": f"random 80/10/10 by molecule (seed {seed})"},
        extra_files={"processed/rejects.tsv": write_rejects, "train_smiles.txt.gz": write_train},
    )
    return target, report


def _flat_smiles(smiles: str) -> str:
    """Canonical SMILES without stereo (how molecules built from 3D coordinates usually come out)."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    return smiles if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def merge_build(
    name: str,
    root: str | Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Join every chunk of ``<root>/.build/<name>`` into dataset ``name``.

    Raises:
        FileNotFoundError: no build of that name.
        ValueError: chunks missing (a shard has not finished), or the dataset exists.
    """
    work = build_dir(name, root)
    if not (work / "build.json").is_file():
        raise FileNotFoundError(f"no build of {name!r} at {work} (run `moldiff data build ... --name {name}` first)")
    manifest = json.loads((work / "build.json").read_text())
    n = int(manifest["num_chunks"])
    missing = [c for c in range(n) if not _chunk_path(work, c).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of {n} chunks of {name!r} are not built yet (first: chunk {missing[0]}); "
                         "finish every shard, then merge")
    parts = [MoleculeArrays.load(_chunk_path(work, c)) for c in range(n)]
    rejects = [r for c in range(n) for r in _read_rejects(_chunk_path(work, c).with_suffix(".rejects.tsv"))]
    arrays = MoleculeArrays.concatenate([p for p in parts if p.num_molecules] or parts[:1])
    opts = manifest["options"]
    target, report = finalize_dataset(
        arrays, rejects, name, root=root, seed=int(opts["seed"]), overwrite=overwrite,
        provenance={"source": manifest["source"], "num_inputs": manifest["num_inputs"],
                    "generator": "moldiff data build: RDKit ETKDGv3 + MMFF94, hydrogens added, bonds kekulised",
                    "build_options": opts},
    )
    report = {"inputs": int(manifest["num_inputs"]), **report}
    if log is not None:
        log(format_report(report, target))
    return target, report


def format_report(report: dict[str, Any], target: Path) -> str:
    """One paragraph: inputs, molecules, conformers, rejects by reason, where."""
    reasons = ", ".join(f"{k} {v}" for k, v in report["reject_reasons"].items()) or "none"
    return (f"{report.get('inputs', '?')} SMILES -> {report['molecules']} molecules, {report['conformers']} conformers "
            f"in {target}; {report['rejects']} rejected ({reasons}); rejects in {target / 'processed' / 'rejects.tsv'}")


# ============================================================================ one call
def build_dataset(
    name: str,
    *,
    smiles_file: str | Path | None = None,
    moses: str | None = None,
    smiles: Sequence[str] | None = None,
    column: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    options: BuildOptions | None = None,
    root: str | Path | None = None,
    shard: tuple[int, int] = (1, 1),
    workers: int = 1,
    overwrite: bool = False,
    merge: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build dataset ``name`` from a SMILES file, a MOSES set or a list (exactly one of them).

    Args:
        name: dataset name.
        smiles_file: text / CSV file of SMILES.
        moses: ``train``, ``test`` or ``test_scaffolds`` (PyPI ``molsets``).
        smiles: SMILES in memory.
        column: CSV column of the SMILES.
        limit: use only the first ``limit`` rows (applied before ``sample``).
        sample: build a random subset of ``sample`` rows (:func:`sample_rows` with
            ``options.seed``), chosen before sharding: every shard builds its part of the same
            subset, and a rerun with the same arguments resumes it.
        options: filters, conformers, seed, chunk size.
        root: data directory.
        shard: ``(k, N)``: build chunks ``c`` with ``c % N == k - 1``.
        workers: processes.
        overwrite: discard an earlier build (and dataset) of that name.
        merge: merge into the dataset when done (default: only for an unsharded build).
        progress: show a progress bar.
        log: called with one line per event.

    Returns:
        The chunk counts of this run, plus the merge report (``dataset`` path, ``molecules``,
        ``conformers``, ``rejects``, ``reject_reasons``) when merged.
    """
    from moldiff.data.datasets import check_dataset_name
    from moldiff.data.qm9 import data_root

    check_dataset_name(name)
    given = [x is not None for x in (smiles_file, moses, smiles)]
    if sum(given) != 1:
        raise ValueError("give exactly one source: --smiles FILE or --moses SET")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    if sample is not None and sample <= 0:
        raise ValueError(f"--sample must be positive, got {sample}")
    opts = options or BuildOptions()
    if moses is not None:
        path = moses_path(moses)
        data, source = read_smiles(path), f"MOSES {moses} ({path.name}, PyPI molsets)"
    elif smiles_file is not None:
        data, source = read_smiles(smiles_file, column), str(Path(smiles_file).resolve())
    else:
        data, source = list(smiles or []), "in-memory SMILES list"
    if limit is not None:
        data, source = data[:limit], f"{source}, first {limit} rows"
    if not data:
        raise ValueError(f"no SMILES in {source}")
    rows: list[int] | None = None
    if sample is not None:  # before chunking and sharding: every shard builds its part of one subset
        rows = sample_rows(len(data), sample, opts.seed).tolist()
        data, source = [data[r] for r in rows], f"{source}, random sample of {sample} rows (seed {opts.seed})"
    target = Path(root if root is not None else data_root()) / name
    if target.exists() and not overwrite:
        raise ValueError(f"dataset {name!r} already exists at {target} (use --overwrite to replace it)")
    out: dict[str, Any] = build_chunks(data, name, opts, source=source, root=root, shard=shard, workers=workers,
                                       overwrite=overwrite, progress=progress, log=log, rows=rows)
    if log is not None:
        log(f"shard {shard[0]}/{shard[1]}: built {out['chunks_done']} chunks ({out['molecules']} molecules, "
            f"{out['rejects']} rejects), {out['chunks_skipped']} already done")
    if merge if merge is not None else shard[1] == 1:
        path, report = merge_build(name, root=root, overwrite=overwrite)
        out.update(report, dataset=str(path))
    elif log is not None:
        log(f"when every shard is done: moldiff data merge {name}" + (f" --root {root}" if root else ""))
    return out
