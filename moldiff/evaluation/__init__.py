"""Evaluation of 3D molecules: EDM stability / validity / uniqueness / novelty and further checks.

A leaf package: it imports only :mod:`moldiff.constants` and :mod:`moldiff.io` from moldiff, plus
numpy, RDKit, pandas and PoseBusters. Metric definitions and units: ``docs/metrics.md``.

The names below load on first use (PEP 562), so that the numpy-only EDM stability check
(:mod:`moldiff.evaluation.stability`, used by the trainer) imports on a machine without RDKit,
e.g. a GPU box that only trains (``benchmarks/ops/train_resume.py``).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Molecule": "build", "build_edm_mol": "build", "to_molecule": "build", "to_molecules": "build",
    "edm_reference_smiles": "reference", "load_reference_smiles": "reference", "save_reference_smiles": "reference",
    "CHECKS": "report", "DEFAULT_CHECKS": "report", "SUMMARY_KEYS": "report", "evaluate_molecules": "report",
    "summarize": "report",
    "bond_order": "stability", "bond_order_matrix": "stability", "check_stability": "stability",
    "check_stability_bonds": "stability",
    "edm_validity": "validity", "novelty": "validity", "perceive_bonds_rdkit": "validity", "uniqueness": "validity",
    "own_bond_mol": "validity",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"moldiff.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'moldiff.evaluation' has no attribute {name!r}")
