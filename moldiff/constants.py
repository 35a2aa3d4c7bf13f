"""Pure data: QM9 vocabulary, EDM bond-length tables and valences, field keys.

Values are EDM's (``qm9/bond_analyze.py``, ``configs/datasets_config.py``) as documented in
``shared/reference/edm_protocol.md``; nothing here imports from moldiff.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------- vocabulary
#: QM9 element vocabulary in EDM's one-hot order (H, C, N, O, F).
QM9_ELEMENTS: Final[tuple[str, ...]] = ("H", "C", "N", "O", "F")
#: Atomic numbers of all elements moldiff can read (symbol -> Z).
ATOMIC_NUMBERS: Final[dict[str, int]] = {
    "H": 1, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9, "Al": 13, "Si": 14, "P": 15, "S": 16,
    "Cl": 17, "As": 33, "Br": 35, "I": 53, "Hg": 80, "Bi": 83,
}
SYMBOLS: Final[dict[int, str]] = {z: s for s, z in ATOMIC_NUMBERS.items()}
#: Largest QM9 molecule (atoms, hydrogens included).
QM9_MAX_N_ATOMS: Final[int] = 29

# --------------------------------------------------------------------------- EDM normalisation
#: EDM ``normalize_factors`` for unconditional QM9: positions, one-hot, charges (atomic number).
EDM_NORM_VALUES: Final[tuple[float, float, float]] = (1.0, 4.0, 10.0)
#: EDM ``normalize_factors`` for the conditional QM9 models (no charges channel).
EDM_NORM_VALUES_CONDITIONAL: Final[tuple[float, float, float]] = (1.0, 8.0, 1.0)

# --------------------------------------------------------------------------- EDM bond tables (pm)
BONDS1: Final[dict[str, dict[str, int]]] = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "B": 119, "Si": 148, "P": 144, "As": 152,
          "S": 134, "Cl": 127, "Br": 141, "I": 161},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177,
          "Br": 194, "I": 214},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136, "Cl": 175, "Br": 214, "S": 168, "I": 222,
          "P": 177},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142, "Br": 172, "S": 151, "P": 163, "Si": 163,
          "Cl": 164, "I": 194},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142, "S": 158, "Si": 160, "Cl": 166, "Br": 178,
          "P": 156, "I": 187},
    "B": {"H": 119, "Cl": 175},
    "Si": {"Si": 233, "H": 148, "C": 185, "O": 163, "S": 200, "F": 160, "Cl": 202, "Br": 215, "I": 243},
    "Cl": {"Cl": 199, "H": 127, "C": 177, "N": 175, "O": 164, "P": 203, "S": 207, "B": 175, "Si": 202,
           "F": 166, "Br": 214},
    "S": {"H": 134, "C": 182, "N": 168, "O": 151, "S": 204, "F": 158, "Cl": 207, "Si": 200, "P": 210,
          "I": 234, "Br": 225},
    "Br": {"Br": 228, "H": 141, "C": 194, "O": 172, "N": 214, "Si": 215, "S": 225, "F": 178, "Cl": 214,
           "P": 222},
    "P": {"P": 221, "H": 144, "C": 184, "O": 163, "Cl": 203, "S": 210, "F": 156, "N": 177, "Br": 222},
    "I": {"H": 161, "C": 214, "Si": 243, "N": 222, "O": 194, "S": 234, "F": 187, "I": 266},
    "As": {"H": 152},
}
BONDS2: Final[dict[str, dict[str, int]]] = {
    "C": {"C": 134, "N": 129, "O": 120, "S": 160},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121, "P": 150},
    "P": {"O": 150, "S": 186},
    "S": {"P": 186},
}
BONDS3: Final[dict[str, dict[str, int]]] = {
    "C": {"C": 120, "N": 116, "O": 113},
    "N": {"C": 116, "N": 110},
    "O": {"C": 113},
}
#: Margins (pm) added to the single / double / triple lengths; comparisons are strict ``<``.
BOND_MARGINS_PM: Final[tuple[int, int, int]] = (10, 5, 3)
#: Total bond order that makes a neutral atom stable (EDM ``allowed_bonds``; no charged forms).
ALLOWED_BONDS: Final[dict[str, int | tuple[int, ...]]] = {
    "H": 1, "C": 4, "N": 3, "O": 2, "F": 1, "B": 3, "Al": 3, "Si": 4, "P": (3, 5), "S": 4,
    "Cl": 1, "As": 3, "Br": 1, "I": 1, "Hg": (1, 2), "Bi": (3, 5),
}

# --------------------------------------------------------------------------- bond types
#: Bond-type codes stored in datasets and ``MolBatch.bond_type`` -> bond order (4 = aromatic, 1.5).
#: Code 0 is free for "no bond" in models that predict bond types.
BOND_ORDERS: Final[dict[int, float]] = {1: 1.0, 2: 2.0, 3: 3.0, 4: 1.5}

# --------------------------------------------------------------------------- QM9 properties
#: Conditioning targets of EDM and their units (gap/homo/lumo in meV, Cv thermo-subtracted).
QM9_TARGETS: Final[dict[str, str]] = {
    "alpha": "Bohr^3", "gap": "meV", "homo": "meV", "lumo": "meV", "mu": "D", "Cv": "cal/(mol K)",
}
HARTREE_TO_EV: Final[float] = 27.211386246
#: Heat-capacity atom reference of QM9's atomref (same for every element), cal/(mol K).
CV_ATOMREF: Final[float] = 2.981

# --------------------------------------------------------------------------- field keys
POS: Final[str] = "pos"
ONE_HOT: Final[str] = "one_hot"
CHARGES: Final[str] = "charges"
BATCH: Final[str] = "batch"
CONTEXT: Final[str] = "context"

#: Largest sampling seed: seeds are 32-bit (NumPy's ``RandomState`` limit; torch seeds derive from them).
#: The one limit: ``SamplingConfig`` checks it and the CLI's ``--seed`` parser reads it.
MAX_SEED: Final[int] = 2**32 - 1
