"""Drug-likeness descriptors and ring statistics (pure checks on sanitised RDKit molecules).

Each check follows the PoseBusters pattern ``check_x(mol) -> {"results": {...}, "details": {...}}``;
``results`` holds the scalar columns that go into the per-molecule table. Descriptors are computed on
the hydrogen-suppressed molecule (``Chem.RemoveHs``), so explicit ``[H]`` atoms do not change them.

SA score is Ertl & Schuffenhauer's (J. Cheminf. 2009) from RDKit's Contrib ``SA_Score/sascorer.py``,
loaded from ``RDConfig.RDContribDir``; if that file is missing the ``sa_score`` column is NaN
(:data:`SA_SCORE_AVAILABLE` says which).
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from types import ModuleType
from typing import Any

from rdkit import Chem, RDConfig
from rdkit.Chem import QED, Crippen, Descriptors, Lipinski

__all__ = ["check_druglike", "check_rings", "sa_score", "SA_SCORE_AVAILABLE", "RING_SIZES"]

#: Ring sizes reported separately; larger rings are pooled in ``n_rings_large``.
RING_SIZES: tuple[int, ...] = (3, 4, 5, 6)


def _load_sascorer() -> ModuleType | None:
    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("moldiff_sascorer", path)
    if spec is None or spec.loader is None:  # pragma: no cover
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SASCORER: ModuleType | None = _load_sascorer()
#: Whether RDKit's Contrib SA_Score is installed (else ``sa_score`` is NaN).
SA_SCORE_AVAILABLE: bool = _SASCORER is not None


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility score, 1 (easy) .. 10 (hard); NaN if SA_Score is unavailable."""
    if _SASCORER is None:
        return float("nan")
    return float(_SASCORER.calculateScore(mol))


def check_druglike(mol: Chem.Mol) -> dict[str, Any]:
    """QED, SA score, Crippen logP, molecular weight and Lipinski rule-of-five violations.

    Args:
        mol: A sanitised molecule (explicit hydrogens allowed).

    Returns:
        ``{"results": {"qed", "sa_score", "logp", "mol_weight", "lipinski_violations"}, "details":
        {"h_donors", "h_acceptors"}}``. Units: ``mol_weight`` in g/mol (Da); the others are unitless.

    >>> r = check_druglike(Chem.MolFromSmiles("CCO"))["results"]
    >>> round(r["mol_weight"], 2), r["lipinski_violations"]
    (46.07, 0)
    """
    heavy = Chem.RemoveHs(mol, sanitize=False)
    heavy.UpdatePropertyCache(strict=False)
    Chem.GetSymmSSSR(heavy)
    mw = Descriptors.MolWt(heavy)
    logp = Crippen.MolLogP(heavy)
    donors = Lipinski.NumHDonors(heavy)
    acceptors = Lipinski.NumHAcceptors(heavy)
    violations = int(mw > 500) + int(logp > 5) + int(donors > 5) + int(acceptors > 10)
    return {
        "results": {
            "qed": float(QED.qed(heavy)),
            "sa_score": sa_score(heavy),
            "logp": float(logp),
            "mol_weight": float(mw),
            "lipinski_violations": violations,
        },
        "details": {"h_donors": int(donors), "h_acceptors": int(acceptors)},
    }


def check_rings(mol: Chem.Mol) -> dict[str, Any]:
    """Ring statistics from RDKit's SSSR.

    Args:
        mol: A sanitised molecule.

    Returns:
        ``{"results": {"n_rings", "n_aromatic_rings", "n_rings_3" .. "n_rings_6", "n_rings_large",
        "max_ring_size"}, "details": {"ring_sizes": [...]}}`` (counts; ``max_ring_size`` is 0 without
        rings).

    >>> check_rings(Chem.MolFromSmiles("c1ccccc1C1CC1"))["results"]["n_rings_3"]
    1
    """
    rings = [tuple(r) for r in Chem.GetSymmSSSR(mol)]
    sizes = [len(r) for r in rings]
    counts = Counter(sizes)
    n_aromatic = sum(all(mol.GetAtomWithIdx(i).GetIsAromatic() for i in r) for r in rings)
    results: dict[str, Any] = {"n_rings": len(sizes), "n_aromatic_rings": int(n_aromatic)}
    results.update({f"n_rings_{k}": counts.get(k, 0) for k in RING_SIZES})
    results["n_rings_large"] = sum(v for k, v in counts.items() if k > max(RING_SIZES))
    results["max_ring_size"] = max(sizes, default=0)
    return {"results": results, "details": {"ring_sizes": sorted(sizes)}}
