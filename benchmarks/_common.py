"""Helpers shared by the benchmark scripts (the only module a script in ``benchmarks/`` may import).

Scripts never import one another: anything two of them need lives here. A script in
``benchmarks/<group>/`` imports it with two lines that do not depend on the working directory::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: shared _common helpers
    from _common import RESULTS, machine, write_json  # noqa: E402

Nothing here is library code: it knows the repository layout (``benchmarks/configs``,
``benchmarks/results``, ``data/qm9``) and builds random models and batches for speed
measurements. What users call lives in the ``moldiff`` package. Heavy or optional dependencies
(the moldiff data layer, pandas) are imported inside the functions that need them, so that
``ops/train_resume.py`` still imports on a GPU image without RDKit or PyYAML.

Sections: paths and timing (every group), random models and batches (``speed/``), QM9 data
(``quality/``, ``speed/bench_evaluation.py``), inpainting rows and pictures (``quality/inpainting*.py``),
packed QM9 for a lent GPU (``ops/``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from moldiff.config import ExperimentConfig
    from moldiff.data.arrays import MoleculeArrays
    from moldiff.types import MolBatch

ROOT = Path(__file__).resolve().parents[1]
#: Every script writes its results here (``--out`` where a script has it changes that).
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {"edm": ROOT / "benchmarks/configs/qm9_uncond.yaml",
           "small": ROOT / "benchmarks/configs/qm9_cpu_small.yaml"}
#: EDM's QM9 train histogram (protocol section 3.4), used when data/qm9/stats.json is absent.
EDM_N_NODES = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644, 13: 3060, 15: 7796,
               25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136, 26: 48, 7: 16, 10: 362, 8: 49,
               9: 124, 27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}
#: QM9 train element frequencies (EDM protocol section 3.4; H, C, N, O, F).
TYPE_FREQ = torch.tensor([923537, 635559, 101476, 140202, 2323], dtype=torch.float64)
ATOMIC_NUMBERS = torch.tensor([1, 6, 7, 8, 9])


# ---------------------------------------------------------------------- paths, machine, timing
def machine(device: str, threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "device": device,
            "load_average": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    print(f"wrote {path}")


def sync(device: str) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeat: int, device: str) -> tuple[float, list[float]]:
    """Median and all wall times of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved(fns: dict[str, Any], repeat: int, device: str) -> dict[str, tuple[float, list[float]]]:
    """Time several variants in alternating rounds (A B C, A B C, ...): median and all times each.

    On a shared machine the load drifts; alternating puts every variant under the same drift, so
    before/after ratios are fairer than timing one variant after the other.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for label, fn in fns.items():
            times[label].append(timed(fn, 1, device)[0])
    return {k: (statistics.median(v), v) for k, v in times.items()}


# ---------------------------------------------------------------------- random models and batches
def qm9_histogram() -> tuple[dict[int, int], str]:
    """QM9 train atom-count histogram and where it came from."""
    path = ROOT / "data" / "qm9" / "stats.json"
    try:
        hist = json.loads(path.read_text())["splits"]["train"]["n_atoms_histogram"]
        return {int(k): int(v) for k, v in hist.items()}, str(path.relative_to(ROOT))
    except (OSError, KeyError, ValueError):
        return dict(EDM_N_NODES), "EDM configs/datasets_config.py"


def atom_counts(num: int, seed: int = 0) -> torch.Tensor:
    """``[num]`` atom counts drawn from QM9's train histogram."""
    from moldiff.sampling.priors import NodeCountDistribution

    return NodeCountDistribution(qm9_histogram()[0]).sample(num, torch.Generator().manual_seed(seed))


def load_config(name: str) -> ExperimentConfig:
    """``edm`` / ``small``, the stem of a YAML in ``benchmarks/configs`` or a YAML path."""
    from moldiff.config import ExperimentConfig

    named = ROOT / "benchmarks" / "configs" / f"{name}.yaml"
    return ExperimentConfig.load_yaml(CONFIGS.get(name) or (named if named.is_file() else name))


def random_process(config: ExperimentConfig, device: str, node_projection: bool = True, seed: int = 0,
                   precision: str = "fp32"):
    """A randomly initialised process for ``config`` (5 QM9 atom types), in eval mode on ``device``.

    ``node_projection`` and ``precision`` override ``config.model``; they do not change the weights
    (the same ``seed`` gives the same parameters in every mode).
    """
    from moldiff.pipeline import build_process

    config = config.override(model={"node_projection": node_projection, "precision": precision})
    torch.manual_seed(seed)
    return build_process(config, num_classes=5).to(device).eval()


def variant_label(label: str, precision: str) -> str:
    """Row label of a before/after variant: fp32 rows keep their historical names."""
    return label if precision == "fp32" else f"{label}, {precision}"


def compile_denoiser(proc) -> str | None:
    """``torch.compile`` the denoiser in place; returns an error message instead of raising."""
    try:
        proc.denoiser = torch.compile(proc.denoiser, dynamic=True)
        return None
    except Exception as exc:  # noqa: BLE001 - record any compiler failure honestly
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def build_variants(args, config: ExperimentConfig) -> tuple[dict[str, tuple[Any, str]], list[str], str | None]:
    """Random processes for the before/after rows, per ``args.precision``: ``node_projection`` off / on
    and (with ``args.compile``) compiled. Returns ``(label -> (process, precision), compile labels,
    compile error or None)``."""
    variants: dict[str, tuple[Any, str]] = {}
    compile_labels, err = [], None
    for precision in args.precision:
        for flag in (False, True):
            variants[variant_label(f"node_projection={flag}", precision)] = (
                random_process(config, args.device, flag, precision=precision), precision)
        if args.compile:
            label = variant_label("torch.compile(dynamic=True)", precision)
            compile_labels.append(label)
            proc = random_process(config, args.device, True, precision=precision)
            err = compile_denoiser(proc)
            if err is None:
                variants[label] = (proc, precision)
    return variants, compile_labels, err


def random_batch(batch_size: int, seed: int, device: str) -> MolBatch:
    """A batch of random molecules with QM9's size and element statistics."""
    from moldiff.types import MolBatch

    g = torch.Generator().manual_seed(seed)
    counts = atom_counts(batch_size, seed)
    n = int(counts.sum())
    types = torch.multinomial(TYPE_FREQ / TYPE_FREQ.sum(), n, replacement=True, generator=g)
    batch = torch.repeat_interleave(torch.arange(batch_size), counts)
    pos = torch.randn(n, 3, generator=g) * 1.5
    mb = MolBatch(pos=pos, one_hot=torch.nn.functional.one_hot(types, 5).float(),
                  atomic_numbers=ATOMIC_NUMBERS[types].float().unsqueeze(1), batch=batch, num_graphs=batch_size)
    return mb.to(device)


def train_steps(proc, mb: MolBatch, steps: int):
    """Closure running ``steps`` trainer-style optimiser steps on ``mb`` (precision: the process's own)."""
    from moldiff.training.trainer import GradClipper

    opt = torch.optim.AdamW(proc.parameters(), lr=1e-4, amsgrad=True, weight_decay=1e-12)
    clipper = GradClipper()
    gen = torch.Generator().manual_seed(0)
    proc.train()

    def run() -> None:
        for _ in range(steps):
            loss = proc.loss(mb, generator=gen).loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clipper([p for p in proc.parameters() if p.grad is not None])
            opt.step()
    return run


# ---------------------------------------------------------------------- QM9 data
def _qm9pack_split(split: str) -> list[tuple[list[str], np.ndarray]]:
    """Fallback reader straight from the qm9pack CSVs (EDM split: seed-0 permutation of GDB order)."""
    import importlib.util

    import pandas as pd

    root = Path(list(importlib.util.find_spec("qm9pack").submodule_search_locations)[0]) / "data"
    df = pd.concat([pd.read_csv(root / f"qm9_part{i}.csv", usecols=["Index", "Elements", "XYZ_Ang"])
                    for i in (1, 2, 3)], ignore_index=True).sort_values("Index").reset_index(drop=True)
    perm = np.random.RandomState(0).permutation(len(df))
    rows = {"train": perm[:100000], "valid": perm[100000:117748], "test": perm[117748:]}[split]
    out = []
    for i in np.sort(rows):
        syms = [s.strip(" '\"") for s in df.at[i, "Elements"].strip("[]").split(",")]
        xyz = df.at[i, "XYZ_Ang"].replace("[", "").replace("]", "").split(",")
        out.append((syms, np.array(xyz, dtype=np.float64).reshape(-1, 3).astype(np.float32)))
    return out


def load_split(split: str) -> tuple[list[tuple[list[str], np.ndarray]], str]:
    """QM9 split as ``(symbols, pos)`` pairs (float32 Å, as EDM feeds them) and the source used."""
    try:
        from moldiff.data.qm9 import load_qm9
        from moldiff.data.splits import get_split
    except ImportError:
        return _qm9pack_split(split), "qm9pack CSV (fallback reader)"
    qm9 = load_qm9(progress=False)
    mols = []
    for i in get_split(split):
        syms, pos = qm9.molecule(int(i))
        mols.append((list(syms), np.asarray(pos, dtype=np.float32)))
    return mols, "moldiff.data.load_qm9 + get_split"


# ---------------------------------------------------------------------- inpainting (quality/inpainting*.py)
def fragment_exact(done: list, records: list, frags: list, model_bonds: list | None) -> list[bool]:
    """Per completion: the fragment's symbols and coordinates bit-exactly first, and (bond models)
    exactly the fragment's bonds among its atoms.

    ``done``: ``(symbols, pos)`` completions; ``records``: the fragments as
    :class:`~moldiff.io.MoleculeRecord` (symbols, pos); ``frags``: the same as loaded
    :class:`~moldiff.sampling.inpaint.Fragment` (bonds as codes); ``model_bonds``: the output's
    ``split_bonds()`` or ``None``.
    """
    out = []
    for k, ((s, pos), f) in enumerate(zip(done, records, strict=True)):
        m = f.num_atoms
        ok = list(s[:m]) == list(f.symbols) and np.array_equal(pos[:m], f.pos)
        if model_bonds is not None:
            ok = ok and sorted(b for b in model_bonds[k] if b[1] < m) == sorted(frags[k].bonds)
        out.append(bool(ok))
    return out


def with_model_bonds(done: list, model_bonds: list) -> list:
    """``(symbols, pos)`` completions as records with the model's own bonds (orders 1, 2, 3, 1.5)."""
    from moldiff.constants import BOND_ORDERS
    from moldiff.io import MoleculeRecord

    return [MoleculeRecord(name="", symbols=s, pos=p, bonds=[(i, j, BOND_ORDERS[c]) for i, j, c in b])
            for (s, p), b in zip(done, model_bonds, strict=True)]


def inpainting_timing(model, frags: list, sizes: list[int], steps: int | None, seed: int, method: str,
                      k: int) -> dict[str, Any]:
    """Unconstrained sampling vs inpainting (``R = 1``) on the first ``k`` molecules, 3 alternating rounds.

    The rows' wall times come one after the other on a shared CPU; alternating the two calls puts
    both under the same load.
    """
    from moldiff.sampling.inpaint import inpaint

    k = min(k, len(sizes))
    timing: dict[str, Any] = interleaved({
        "unconstrained": lambda: model.sample_raw(k, steps=steps, seed=seed, num_atoms=sizes[:k], method=method),
        "inpainting_resample_1": lambda: inpaint(model.process, frags[:k], sizes[:k], steps=steps, seed=seed,
                                                 method=method),
    }, repeat=3, device="cpu")
    timing = {name: {"median_s": round(med, 2), "all_s": [round(t, 2) for t in all_]}
              for name, (med, all_) in timing.items()}
    timing["molecules"] = k
    timing["ratio_inpainting_to_unconstrained"] = round(
        timing["inpainting_resample_1"]["median_s"] / timing["unconstrained"]["median_s"], 2)
    return timing


def draw_completions(items: list, path: Path, per_row: int = 4, max_mols: int = 12) -> int:
    """Grid picture of the valid completions, fragment atoms highlighted; returns how many were drawn.

    ``items``: ``(molecule, m, legend)`` with ``molecule`` a ``(symbols, pos)`` pair (bonds from
    EDM's distance rule) or a ``(symbols, pos, bonds)`` triple (the model's own bond codes) and the
    fragment's ``m`` atoms first. Hydrogens are not drawn.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem, Draw
    from rdkit.rdBase import BlockLogs

    from moldiff.pipeline import to_rdkit

    images, hl, legends = [], [], []
    for mol_in, m, label in items:
        mol = Chem.Mol(to_rdkit(*mol_in))
        for a in mol.GetAtoms():
            a.SetIntProp("frag", int(a.GetIdx() < m))
        with BlockLogs():  # no RDKit log line per invalid completion
            try:
                Chem.SanitizeMol(mol)
                mol = Chem.RemoveHs(mol)
            except Exception:  # noqa: BLE001 - only valid completions are drawn
                continue
        AllChem.Compute2DCoords(mol)
        images.append(mol)
        hl.append([a.GetIdx() for a in mol.GetAtoms() if a.GetIntProp("frag")])
        legends.append(label)
        if len(images) >= max_mols:
            break
    if not images:
        return 0
    img = Draw.MolsToGridImage(images, molsPerRow=per_row, subImgSize=(250, 200), legends=legends,
                               highlightAtomLists=hl)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(str(tmp))
    tmp.replace(path)
    return len(images)


# ---------------------------------------------------------------------- packed QM9 (ops/)
def load_packed(path: str | Path, max_molecules: int | None = None) -> MoleculeArrays:
    """Read a file written by ``ops/pack_qm9.py`` as :class:`~moldiff.data.arrays.MoleculeArrays` (float32)."""
    from moldiff.data.arrays import MoleculeArrays, atom_ranges

    with np.load(path) as f:
        pos, z, ptr = f["pos"].astype(np.float32), f["atomic_numbers"], f["ptr"]
        elements, index = tuple(str(e) for e in f["elements"]), f["index"]
    if max_molecules is not None and max_molecules < len(ptr) - 1:
        atoms = atom_ranges(ptr[:max_molecules], np.diff(ptr)[:max_molecules])
        pos, z, ptr, index = pos[atoms], z[atoms], ptr[: max_molecules + 1], index[:max_molecules]
    m = len(ptr) - 1
    return MoleculeArrays(pos=pos, atomic_numbers=z, ptr=ptr, elements=elements,
                          names=np.array([f"gdb_{i}" for i in index]), index=index[:m])
