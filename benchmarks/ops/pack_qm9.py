"""Pack QM9's training split into one compact ``.npz`` for the GPU machine (no dataset there).

    .venv/bin/python benchmarks/ops/pack_qm9.py [--out .gpu/qm9_train.npz] [--float16]
        [--max-molecules N]

Uses moldiff's data layer (:func:`moldiff.data.qm9.load_qm9`, :func:`moldiff.data.splits.get_split`).
Keys: ``pos [A, 3]`` (float32, or float16 with ``--float16``; centred per molecule, so float16
keeps ~0.004 Å resolution), ``atomic_numbers [A]`` uint8, ``ptr [M + 1]`` int64, ``elements``,
``index [M]`` (QM9 GDB index), ``split`` (``"train"``). Load it back with ``load_packed`` of
``benchmarks/_common.py`` (shared with ``train_resume.py``: scripts do not import one another).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import ROOT, load_packed  # noqa: E402


def pack(out: Path, float16: bool = False, max_molecules: int | None = None, split: str = "train") -> Path:
    """Write the ``split`` molecules of QM9 to ``out`` (compressed ``.npz``; ``.gpu/`` is git-ignored)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    from moldiff.data.qm9 import load_qm9
    from moldiff.data.splits import get_split

    rows = get_split(split)
    if max_molecules:
        rows = rows[:max_molecules]
    arrays = load_qm9(progress=False).subset(rows)
    batch = arrays.batch
    counts = arrays.n_atoms.astype(np.float64)
    centre = np.stack([np.bincount(batch, arrays.pos[:, d].astype(np.float64)) for d in range(3)], 1)
    pos = arrays.pos - (centre / counts[:, None])[batch]
    np.savez_compressed(
        out, pos=pos.astype(np.float16 if float16 else np.float32),
        atomic_numbers=arrays.atomic_numbers.astype(np.uint8), ptr=arrays.ptr.astype(np.int64),
        elements=np.array(arrays.elements), index=arrays.index.astype(np.int64), split=np.array(split),
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu" / "qm9_train.npz")
    ap.add_argument("--float16", action="store_true", help="store positions as float16 (smaller)")
    ap.add_argument("--max-molecules", type=int, default=None)
    args = ap.parse_args(argv)
    out = pack(args.out, args.float16, args.max_molecules)
    back = load_packed(out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {back.num_molecules} molecules, "
          f"{back.num_atoms_total} atoms, elements {back.elements}")


if __name__ == "__main__":
    main()
