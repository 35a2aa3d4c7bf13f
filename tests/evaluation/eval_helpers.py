"""Helpers: hand-built molecules and the golden QM9 molecules (tests/fixtures/golden_qm9.xyz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_qm9.xyz"

# Tetrahedral methane, C-H 1.09 Å.
_T = np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], dtype=float) / np.sqrt(3)
METHANE = (["C", "H", "H", "H", "H"], np.vstack([[0, 0, 0], 1.09 * _T]))
WATER = (["O", "H", "H"], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
# Ammonium-like: N with four H at 1.01 Å -> valence 4, EDM-unstable (no charges).
AMMONIUM = (["N", "H", "H", "H", "H"], np.vstack([[0, 0, 0], 1.01 * _T]))
# Methyl radical: C with three H -> valence 3 (under-bonded) -> unstable, but RDKit-valid.
METHYL = (["C", "H", "H", "H"], np.vstack([[0, 0, 0], 1.09 * _T[:3]]))


def benzene(cc: float = 1.395, ch: float = 1.087) -> tuple[list[str], np.ndarray]:
    ang = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(ang), np.sin(ang), np.zeros(6)], 1)
    return ["C"] * 6 + ["H"] * 6, np.vstack([cc * ring, (cc + ch) * ring])


def read_golden() -> list[tuple[str, list[str], np.ndarray, dict[str, str]]]:
    """(name, symbols, pos, expected) records of golden_qm9.xyz (expected values in the comment line)."""
    lines = GOLDEN.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        name, *fields = lines[i + 1].split()
        block = [ln.split() for ln in lines[i + 2:i + 2 + n]]
        pos = np.array([[float(v) for v in b[1:]] for b in block])
        out.append((name, [b[0] for b in block], pos, dict(f.split("=") for f in fields)))
        i += n + 2
    return out


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q
