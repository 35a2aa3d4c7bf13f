"""DatasetStats: the typed view of a checkpoint's ``stats`` dict (round trip, old files, immutability)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moldiff.checkpoint import load_checkpoint
from moldiff.pipeline import PRETRAINED_DIR, load_model, shipped_models
from moldiff.types import DatasetStats, MolBatch


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_stats_round_trip_exactly(name):
    stored = load_checkpoint(PRETRAINED_DIR / f"{name}.pt")["stats"]
    stats = DatasetStats.from_dict(stored)
    assert stats.to_dict() == stored
    assert list(stats.to_dict()) == list(stored)  # same key order as the trainer writes
    if name == "drugs":  # heavy atoms of MOSES
        assert stats.elements == ("C", "N", "O", "F", "S", "Cl", "Br") and stats.context_nf == 0
        return
    assert stats.elements == ("H", "C", "N", "O", "F") and stats.max_atoms == 29
    assert stats.context_nf == len(stats.conditioning) == (0 if name in ("qm9", "qm9-edm") else 1)
    if stats.conditioning:
        (prop,) = stats.conditioning
        mean, mad = stats.property_norms[prop]
        assert isinstance(mean, float) and mad > 0
        assert prop in stats.property_distribution["ranges"]


def test_model_stats_are_typed_and_frozen():
    model = load_model("qm9-alpha")
    assert isinstance(model.stats, DatasetStats)
    assert model.max_atoms == 29 and model.elements == ["H", "C", "N", "O", "F"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.stats.context_nf = 3  # type: ignore[misc]


def test_older_and_minimal_dicts():
    old = {"elements": ["H", "C"], "n_atoms_hist": {"3": 2, "5": 1}, "custom": [1, 2]}
    stats = DatasetStats.from_dict(old)
    assert stats.n_atoms_hist == {3: 2, 5: 1} and stats.max_n_atoms is None and stats.max_atoms == 5
    assert stats.context_nf == 0 and stats.conditioning == () and stats.property_distribution is None
    assert stats.to_dict()["custom"] == [1, 2]  # unknown keys survive the round trip
    assert "max_n_atoms" not in stats.to_dict() and "property_norms" not in stats.to_dict()
    assert DatasetStats.from_dict(stats) is stats
    with pytest.raises(KeyError, match="elements"):
        DatasetStats.from_dict({"n_atoms_hist": {3: 1}})


def test_stats_survive_weights_only_save(tmp_path):
    from moldiff.checkpoint import save_checkpoint

    stats = DatasetStats(elements=("H", "C"), n_atoms_hist={3: 1}, max_n_atoms=3, context_nf=1,
                         conditioning=("alpha",), property_norms={"alpha": (75.0, 6.0)})
    save_checkpoint(tmp_path / "c.pt", {"config": {}, "stats": stats.to_dict(), "model": {}, "ema": {}})
    assert DatasetStats.from_dict(load_checkpoint(tmp_path / "c.pt")["stats"]) == stats


def test_molbatch_atomic_numbers_and_its_edm_alias():
    """The channel EDM calls "charges" is named for what it holds; ``charges`` stays an alias."""
    z = torch.tensor([[6.0], [1.0]])
    kw = dict(pos=torch.zeros(2, 3), one_hot=torch.eye(2), batch=torch.zeros(2, dtype=torch.long), num_graphs=1)
    new, old = MolBatch(atomic_numbers=z, **kw), MolBatch(charges=z, **kw)
    assert new.atomic_numbers is z and new.charges is z and old.atomic_numbers is z
    positional = MolBatch(kw["pos"], kw["one_hot"], z, kw["batch"], 1)
    assert positional.atomic_numbers is z and positional.formal_charge is None
    assert [f.name for f in dataclasses.fields(MolBatch)][:5] == ["pos", "one_hot", "atomic_numbers", "batch",
                                                                   "num_graphs"]
    moved = new.to("cpu")
    assert torch.equal(moved.atomic_numbers, z) and moved.num_graphs == 1
    assert dataclasses.replace(new, atomic_numbers=z[:, :0]).charges.shape == (2, 0)
    with pytest.raises(TypeError, match="not both"):
        MolBatch(atomic_numbers=z, charges=z, **kw)
    with pytest.raises(TypeError, match="needs"):
        MolBatch(pos=kw["pos"], one_hot=kw["one_hot"], batch=kw["batch"], num_graphs=1)
