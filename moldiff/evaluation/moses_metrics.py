"""MOSES distribution metrics written with RDKit and numpy (MOSES's own code is not imported).

Definitions follow the MOSES benchmark (Polykovskiy et al., *Front. Pharmacol.* 11, 565644, 2020;
``moses/metrics/{metrics,utils}.py`` of the ``molsets`` package), computed on the valid generated
molecules (heavy-atom SMILES):

* **FCD** (Fréchet ChemNet Distance; Preuer et al., *J. Chem. Inf. Model.* 2018): Fréchet distance
  between Gaussians fitted to the ChemNet penultimate activations of the two SMILES sets. Uses the
  PyPI ``fcd`` package (its shipped ChemNet v0.13 weights, no download); NaN when it is missing.
* **SNN**: mean over generated molecules of the maximum Tanimoto similarity to any reference
  molecule, on Morgan fingerprints (radius 2, 1024 bits).
* **Frag**: cosine similarity of the BRICS fragment count vectors (``FragmentOnBRICSBonds``, the
  fragments' SMILES counted over the whole set).
* **Scaf**: cosine similarity of the Bemis-Murcko scaffold count vectors (scaffolds with at least
  two rings, as MOSES's ``compute_scaffolds`` default).
* **IntDiv_p**: ``1 - (mean_{i,j} T(i, j)^p)^(1/p)`` over all ordered pairs of the generated set,
  the diagonal included (so a set of identical molecules has IntDiv 0).

:func:`wasserstein` is the 1-D Wasserstein (earth mover's) distance MOSES reports for logP, SA, QED
and molecular weight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold

__all__ = [
    "FCD_AVAILABLE", "canonical_smiles", "to_mols", "fingerprints", "snn", "internal_diversity",
    "fragment_counts", "scaffold_counts", "cos_similarity", "fcd_stats", "frechet_distance", "fcd",
    "wasserstein",
]


def _fcd_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("fcd") is not None


#: Whether the PyPI ``fcd`` package (ChemNet weights) is installed (``pip install 'moldiff[drugs]'``).
FCD_AVAILABLE: bool = _fcd_available()


def canonical_smiles(mol_or_smiles: Chem.Mol | str | None) -> str | None:
    """Canonical heavy-atom SMILES without stereochemistry (the form MOSES and novelty compare).

    The molecule is written, re-read and written again, so that the result equals that of any other
    route to the same graph (``moldiff data build`` writes its ``train_smiles.txt.gz`` this way).

    >>> canonical_smiles("[H]OC([H])([H])C")
    'CCO'
    """
    if mol_or_smiles is None:
        return None
    mol = Chem.MolFromSmiles(mol_or_smiles) if isinstance(mol_or_smiles, str) else mol_or_smiles
    if mol is None:
        return None
    try:
        smi = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    except (ValueError, RuntimeError):
        return None
    again = Chem.MolFromSmiles(smi)
    return None if again is None else Chem.MolToSmiles(again, isomericSmiles=False)


def to_mols(smiles: Iterable[str]) -> list[Chem.Mol]:
    """Parse SMILES, dropping the ones RDKit rejects."""
    out = []
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is not None:
            out.append(m)
    return out


@lru_cache(maxsize=1)
def _morgan() -> Any:
    return rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)


def fingerprints(mols: Sequence[Chem.Mol]) -> list[Any]:
    """Morgan bit-vector fingerprints, radius 2, 1024 bits (MOSES's ``morgan`` type)."""
    gen = _morgan()
    return [gen.GetFingerprint(m) for m in mols]


def _tanimoto_rows(query: Sequence[Any], stock: Sequence[Any]) -> Iterable[np.ndarray]:
    for fp in query:
        yield np.asarray(DataStructs.BulkTanimotoSimilarity(fp, stock), dtype=np.float64)


def snn(gen_fps: Sequence[Any], ref_fps: Sequence[Any]) -> float:
    """Similarity to a nearest neighbour (MOSES ``SNN``): mean of each generated molecule's max Tanimoto.

    Args:
        gen_fps: Fingerprints of the generated molecules (:func:`fingerprints`).
        ref_fps: Fingerprints of the reference set.

    Returns:
        Value in [0, 1]; NaN if either set is empty. A set against itself gives 1.
    """
    if not gen_fps or not ref_fps:
        return float("nan")
    return float(np.mean([row.max() for row in _tanimoto_rows(gen_fps, ref_fps)]))


def internal_diversity(fps: Sequence[Any], p: int = 1) -> float:
    """Internal diversity ``IntDiv_p`` (MOSES): ``1 - (mean T^p)^(1/p)`` over all pairs, diagonal included.

    Args:
        fps: Fingerprints of the generated set.
        p: 1 (IntDiv1) or 2 (IntDiv2).

    Returns:
        Value in [0, 1); 0 for identical molecules; NaN for an empty set.
    """
    if not fps:
        return float("nan")
    total = sum(float(np.sum(row ** p)) for row in _tanimoto_rows(fps, fps))
    return float(1.0 - (total / len(fps) ** 2) ** (1.0 / p))


def _fragments(mol: Chem.Mol) -> list[str]:
    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def fragment_counts(mols: Iterable[Chem.Mol]) -> Counter:
    """BRICS fragment SMILES counted over a set (MOSES ``compute_fragments``).

    >>> sorted(fragment_counts([Chem.MolFromSmiles("CCOC(=O)c1ccccc1")]))
    ['[1*]C([6*])=O', '[16*]c1ccccc1', '[3*]O[3*]', '[4*]CC']
    """
    counts: Counter = Counter()
    for m in mols:
        counts.update(_fragments(m))
    return counts


def _scaffold(mol: Chem.Mol, min_rings: int) -> str | None:
    try:
        scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(scaffold)
    if not smiles or scaffold.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def scaffold_counts(mols: Iterable[Chem.Mol], min_rings: int = 2) -> Counter:
    """Bemis-Murcko scaffold SMILES counted over a set (MOSES ``compute_scaffolds``, ``min_rings=2``).

    >>> dict(scaffold_counts([Chem.MolFromSmiles("CCc1ccc(-c2ccccc2)cc1")]))
    {'c1ccc(-c2ccccc2)cc1': 1}
    """
    counts: Counter = Counter()
    for m in mols:
        s = _scaffold(m, min_rings)
        if s is not None:
            counts[s] += 1
    return counts


def cos_similarity(ref_counts: dict[str, float], gen_counts: dict[str, float]) -> float:
    """Cosine similarity of two count vectors keyed by string (MOSES; NaN if either is empty).

    >>> round(cos_similarity({"a": 1, "b": 1}, {"a": 2, "b": 2}), 12)
    1.0
    """
    if not ref_counts or not gen_counts:
        return float("nan")
    keys = sorted(set(ref_counts) | set(gen_counts))
    a = np.array([ref_counts.get(k, 0) for k in keys], dtype=np.float64)
    b = np.array([gen_counts.get(k, 0) for k in keys], dtype=np.float64)
    return float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), 0.0, 1.0))


@lru_cache(maxsize=1)
def _chemnet() -> Any:
    import warnings

    from fcd import load_ref_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_ref_model()


def fcd_stats(smiles: Sequence[str], batch_size: int = 128) -> dict[str, np.ndarray]:
    """Mean and covariance of the ChemNet activations of ``smiles`` (on CPU).

    Raises:
        ImportError: If the ``fcd`` package is not installed.
        ValueError: With fewer than two SMILES (no covariance).
    """
    import warnings

    from fcd import get_predictions

    if len(smiles) < 2:
        raise ValueError(f"FCD needs at least 2 molecules, got {len(smiles)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        act = get_predictions(_chemnet(), list(smiles), batch_size=batch_size, device="cpu")
    act = act.astype(np.float64)
    return {"mu": act.mean(axis=0), "sigma": np.cov(act.T)}


def frechet_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians."""
    from scipy import linalg

    diff = a["mu"] - b["mu"]
    covmean, _ = linalg.sqrtm(a["sigma"] @ b["sigma"], disp=False)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(diff))
        covmean = linalg.sqrtm((a["sigma"] + eps) @ (b["sigma"] + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(a["sigma"]) + np.trace(b["sigma"]) - 2 * np.trace(covmean))


def fcd(gen_smiles: Sequence[str], ref: Sequence[str] | dict[str, np.ndarray]) -> float:
    """FCD between generated SMILES and a reference (SMILES or :func:`fcd_stats`); NaN without ``fcd``.

    MOSES computes it on canonical SMILES of the valid molecules; lower is better, 0 for equal sets.
    """
    if not FCD_AVAILABLE or len(gen_smiles) < 2:
        return float("nan")
    ref_stats = ref if isinstance(ref, dict) else fcd_stats(ref)
    return frechet_distance(fcd_stats(gen_smiles), ref_stats)


def wasserstein(a: Sequence[float], b: Sequence[float]) -> float:
    """1-D Wasserstein distance between two samples (NaNs dropped; NaN if either is empty)."""
    from scipy.stats import wasserstein_distance

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not len(x) or not len(y):
        return float("nan")
    return float(wasserstein_distance(x, y))
