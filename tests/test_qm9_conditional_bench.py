"""benchmarks/quality/qm9_conditional.py: stage settings with command-line overrides, and the table."""

from __future__ import annotations

import argparse

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/quality/qm9_conditional.py")


def _args(**kw):
    base = dict(reduced=True, cls_train=None, cls_epochs=None, cls_minutes=None, cls_hidden=None,
                cls_layers=None, num_samples=None, steps=None)
    return argparse.Namespace(**{**base, **kw})


def test_settings_apply_overrides_on_the_reduced_preset(bench):
    assert bench.settings(_args()) == bench.REDUCED
    s = bench.settings(_args(cls_train=0, cls_epochs=12, cls_minutes=35.0, num_samples=500))
    assert s["cls_train"] is None  # 0 means all of D_a
    assert (s["cls_epochs"], s["cls_minutes"], s["num_samples"]) == (12, 35.0, 500)
    assert s["cls_hidden"] == bench.REDUCED["cls_hidden"] and bench.REDUCED["cls_train"] == 5000  # preset untouched


def test_table_reports_the_samples_stability(bench):
    row = {"mae": {"Naive": 8.0, "#Atoms": 3.9, "EDM": 2.5, "QM9": 0.9},
           "generator_robust": {"median_ae": 2.0, "bounded_fraction": 1.0, "bounded_mae": 2.5,
                                "atom_stability": 0.871, "mol_stability": 0.12}}
    table = bench.format_table({"alpha": row})
    assert "| moldiff (generator) | 2.5 |" in table
    assert "87.1 / 12.0 %" in table
