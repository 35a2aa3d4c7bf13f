"""Pure functions of benchmarks/quality/inpainting_drugs.py: the Murcko-scaffold fragment of a molecule
with its own bonds, the atom reordering and the scoring by a molecule's own bonds."""

from __future__ import annotations

import numpy as np
import pytest
from script_loader import load_script

pytest.importorskip("rdkit")

# benchmarks/ is not a package: load the script by path, as `python benchmarks/quality/inpainting_drugs.py` runs it
bench = load_script("benchmarks/quality/inpainting_drugs.py")

# CCc1ccccc1 (ethylbenzene), Kekulé bonds: ethyl 0-1, ring 2..7
ETHYLBENZENE = (["C"] * 8, [(0, 1, 1), (1, 2, 1), (2, 3, 2), (3, 4, 1), (4, 5, 2), (5, 6, 1), (6, 7, 2), (7, 2, 1)])
# O=C1CCCCC1C(OC)c1ccccc1: a cyclohexanone (O0 double-bonded to ring atom 1, ring 1..6) and a benzene
# (ring 8..13) joined by the one-atom linker C7, which carries a methoxy side chain (O14, C15)
LINKED = (["O", "C", "C", "C", "C", "C", "C", "C", "C", "C", "C", "C", "C", "C", "O", "C"],
          [(0, 1, 2), (1, 2, 1), (2, 3, 1), (3, 4, 1), (4, 5, 1), (5, 6, 1), (6, 1, 1),
           (6, 7, 1), (7, 8, 1), (8, 9, 2), (9, 10, 1), (10, 11, 2), (11, 12, 1), (12, 13, 2), (13, 8, 1),
           (7, 14, 1), (14, 15, 1)])


def test_murcko_atoms_of_hand_made_molecules():
    assert bench.murcko_atoms(*ETHYLBENZENE) == [2, 3, 4, 5, 6, 7]
    # both rings, the linker atom between them and the ring's =O; not the methoxy on the linker
    assert bench.murcko_atoms(*LINKED) == list(range(14))
    assert bench.murcko_atoms(["C"] * 4, [(0, 1, 1), (1, 2, 1), (2, 3, 1)]) == []  # no ring: skipped
    benzene = (["C"] * 6, [(i, (i + 1) % 6, 1 + i % 2) for i in range(6)])
    assert bench.murcko_atoms(*benzene) == list(range(6))  # the whole molecule: skipped
    assert bench.murcko_atoms(["C", "O"], [(0, 1, 3)]) is None  # pentavalent O: not sanitisable


def test_reorder_and_scaffold_fragment_scores():
    symbols, bonds = LINKED
    pos = np.arange(48, dtype=np.float32).reshape(16, 3)
    scaffold = bench.murcko_atoms(symbols, bonds)
    rest = [i for i in range(16) if i not in scaffold]
    f_sym, f_pos, f_bonds = bench.reorder(symbols, pos, bonds, scaffold)
    assert f_sym == symbols[:14] and f_pos.dtype == np.float64 and np.array_equal(f_pos, pos[:14])
    assert len(f_bonds) == 15 and all(i < j < 14 for i, j, _ in f_bonds)  # the two side-chain bonds dropped
    o_sym, o_pos, o_bonds = bench.reorder(symbols, pos, bonds, rest + scaffold)  # side chain first
    assert o_sym[:2] == ["O", "C"] and np.array_equal(o_pos[0], pos[14]) and len(o_bonds) == 17
    assert (0, 1, 1) in o_bonds and (0, 9, 1) in o_bonds  # O14-C15 and O14-C7, renumbered

    from moldiff.constants import BOND_ORDERS
    from moldiff.evaluation.validity import own_bond_mol

    query = own_bond_mol(f_sym, f_pos, [(i, j, BOND_ORDERS[c]) for i, j, c in f_bonds])[0]
    whole = bench.score(o_sym, o_pos, o_bonds, query)
    assert whole["valid"] and whole["connected"] and whole["contains_scaffold"]
    assert whole["smiles"] == bench.score(symbols, pos, bonds)["smiles"]  # canonical: atom order does not matter
    assert whole["murcko"] == bench.score(f_sym, f_pos, f_bonds)["smiles"]
    other = bench.score(*ETHYLBENZENE[:1], np.zeros((8, 3)), ETHYLBENZENE[1], query)
    assert other["valid"] and not other["contains_scaffold"]
    bad = bench.score(["C", "O"], np.zeros((2, 3)), [(0, 1, 3)], query)
    assert not bad["valid"] and bad["contains_scaffold"] is None


def test_summarise_rows():
    orig = [{"valid": True, "connected": True, "smiles": "CCO", "murcko": ""}] * 3
    runs = [{"valid": True, "connected": True, "smiles": "CCO", "murcko": "", "contains_scaffold": True},
            {"valid": True, "connected": False, "smiles": "C.O", "murcko": "", "contains_scaffold": False},
            {"valid": False, "connected": False, "smiles": None, "murcko": None, "contains_scaffold": None}]
    row = bench.summarise(runs, orig, "test", 3.0)
    assert row["validity"] == pytest.approx(2 / 3) and row["validity_connected"] == pytest.approx(1 / 3)
    assert row["contains_scaffold"] == 0.5 and row["recovered"] == pytest.approx(1 / 3)
    assert row["uniqueness"] == 1.0 and row["scaffold_unchanged"] == 1.0
    empty = bench.summarise(runs[2:], orig[:1], "none valid", 1.0)
    assert empty["uniqueness"] is None and empty["contains_scaffold"] is None and empty["recovered"] == 0.0
