"""Evaluation of 3D molecules: EDM stability / validity / uniqueness / novelty and further checks.

A leaf package: it imports only :mod:`moldiff.constants` and :mod:`moldiff.io` from moldiff, plus
numpy, RDKit, pandas and PoseBusters. Metric definitions and units: ``docs/metrics.md``.
"""

from moldiff.evaluation.build import Molecule, build_edm_mol, to_molecule, to_molecules
from moldiff.evaluation.reference import edm_reference_smiles, load_reference_smiles, save_reference_smiles
from moldiff.evaluation.report import CHECKS, DEFAULT_CHECKS, SUMMARY_KEYS, evaluate_molecules, summarize
from moldiff.evaluation.stability import bond_order, bond_order_matrix, check_stability
from moldiff.evaluation.validity import edm_validity, novelty, perceive_bonds_rdkit, uniqueness

__all__ = [
    "CHECKS",
    "DEFAULT_CHECKS",
    "SUMMARY_KEYS",
    "Molecule",
    "bond_order",
    "bond_order_matrix",
    "build_edm_mol",
    "check_stability",
    "edm_reference_smiles",
    "edm_validity",
    "evaluate_molecules",
    "load_reference_smiles",
    "novelty",
    "perceive_bonds_rdkit",
    "save_reference_smiles",
    "summarize",
    "to_molecule",
    "to_molecules",
    "uniqueness",
]
