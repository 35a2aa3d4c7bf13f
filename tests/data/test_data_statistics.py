import json
from pathlib import Path

import numpy as np
import pytest

from moldiff.data import compute_statistics, histogram, load_stats, property_mean_mad, property_norms
from moldiff.data.arrays import MoleculeArrays
from moldiff.data.statistics import read_stats

REPO_DATA = Path(__file__).resolve().parents[2] / "data"

# edm_protocol.md §5.2: mean / MAD on EDM's valid split (gap/homo/lumo meV, Cv thermo-subtracted).
EDM_VALID_MEAN_MAD = {
    "alpha": (75.373, 6.273), "gap": (6863.2, 1061.9), "homo": (-6538.6, 439.57),
    "lumo": (324.58, 1033.8), "mu": (2.6751, 1.1757), "Cv": (-22.167, 4.8885),
}


def test_committed_stats_match_edm_reference():
    stats = read_stats(REPO_DATA / "qm9" / "stats.json")  # the committed file
    assert stats["properties"]["split"] == "valid"
    norms = property_norms(stats, EDM_VALID_MEAN_MAD)
    for key, (mean, mad) in EDM_VALID_MEAN_MAD.items():
        assert norms[key][0] == pytest.approx(mean, rel=1e-4, abs=1e-3), key
        assert norms[key][1] == pytest.approx(mad, rel=1e-4), key
    assert stats["properties"]["units"]["gap"] == "meV"
    assert sum(histogram(stats, "train").values()) == 100_000
    assert histogram(stats, "train")[19] == 13832 and histogram(stats, "train", heavy_only=True)[9] == 83366
    assert stats["splits"]["train"]["element_counts"]["F"] == 2323
    assert "qm9pack" in stats["provenance"]["source"]
    with pytest.raises(ValueError, match="no statistics"):
        property_norms(stats, ["nope"])


def test_load_stats_qm9_matches_committed():
    committed = read_stats(REPO_DATA / "qm9" / "stats.json")
    stats = load_stats("qm9")  # computed under $MOLDIFF_DATA_DIR if that is set
    assert stats["splits"] == committed["splits"]
    assert stats["properties"]["mean"] == pytest.approx(committed["properties"]["mean"])


def _toy():
    return MoleculeArrays.from_molecules(
        [(["C", "H"], np.zeros((2, 3))), (["O"], np.zeros((1, 3))), (["C", "C", "H"], np.zeros((3, 3)))],
        properties={"y": [1.0, 2.0, 6.0]},
    )


def test_mean_mad_and_histograms_exact(tmp_path):
    arrays = _toy()
    assert property_mean_mad(arrays) == {"y": (3.0, pytest.approx(2.0))}
    assert property_mean_mad(arrays, np.array([0, 1]))["y"] == (1.5, 0.5)
    with pytest.raises(KeyError):
        property_mean_mad(arrays, keys=["z"])
    splits = {"train": np.array([0, 2]), "valid": np.array([1])}
    stats = compute_statistics(arrays, splits, provenance={"a": 1})
    assert stats["splits"]["train"]["n_atoms_histogram"] == {"2": 1, "3": 1}
    assert stats["splits"]["train"]["n_heavy_atoms_histogram"] == {"1": 1, "2": 1}
    assert stats["splits"]["train"]["element_counts"] == {"H": 2, "C": 3, "O": 0}
    assert stats["properties"]["mean"] == {"y": 2.0} and stats["provenance"]["a"] == 1
    (tmp_path / "s.json").write_text(json.dumps(stats))
    assert read_stats(tmp_path / "s.json") == stats
    with pytest.raises(ValueError, match="property split"):
        compute_statistics(arrays, {"train": np.array([0])})
