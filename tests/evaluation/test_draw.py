import pandas as pd
import pytest

from moldiff.evaluation.draw import draw_grid


def test_draw_grid_skips_invalid_and_writes_png(tmp_path):
    table = pd.DataFrame({
        "smiles": ["[H]C([H])([H])[H]", None, "[H]O[H]"],
        "valid": [True, False, True],
        "mol_stable": [True, False, False],
    })
    out = tmp_path / "grid.png"
    assert draw_grid(table, out) == 2
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_grid_nothing_valid(tmp_path):
    table = pd.DataFrame({"smiles": [None], "valid": [False], "mol_stable": [False]})
    with pytest.raises(ValueError, match="no valid molecule"):
        draw_grid(table, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
