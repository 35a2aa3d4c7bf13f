"""``moldiff models``: the table of shipped models, one model's details, ``--json``, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from moldiff.checkpoint import save_checkpoint
from moldiff.cli import _parse_args, main
from moldiff.config import ExperimentConfig
from moldiff.model_card import describe_model
from moldiff.models import build_model
from moldiff.pipeline import PRETRAINED_DIR, shipped_models

SHIPPED = shipped_models()


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _parse_table(text: str) -> dict[str, dict[str, str]]:
    """The table printed by ``moldiff models`` as ``{name: {column: cell}}`` (cells hold no double space)."""
    lines = text.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        if not line.strip():  # the legend follows
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, str]]:
    from moldiff.model_card import describe_shipped, format_table

    return _parse_table(format_table(describe_shipped()))


def test_parse_args():
    args = _parse_args(["models"])
    assert args.command == "models" and args.model is None and not args.json
    args = _parse_args(["models", "qm9", "--json"])
    assert args.model == "qm9" and args.json


def test_table_lists_every_shipped_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert sorted(_parse_table(out)) == sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt")) == SHIPPED
    assert max(len(line) for line in out.splitlines()) <= 120
    assert "moldiff models NAME_OR_PATH" in out  # the legend points to the detail view


def test_table_capabilities(table):
    qm9, drugs, alpha = table["qm9"], table["drugs"], table["qm9-alpha"]
    assert (qm9["dataset"], qm9["cond."], qm9["H"], qm9["bonds"]) == ("qm9", "-", "model", "dist")
    assert (drugs["bonds"], drugs["H"], drugs["cond."]) == ("model", "RDKit", "-")
    assert (alpha["cond."], alpha["bonds"], alpha["H"]) == ("alpha", "dist", "model")
    assert all(r["--fix"] == ("trained" if describe_model(n)["fragment_input"] else "RePaint")
               for n, r in table.items())
    assert qm9["sampler"].startswith("dpm2sde 50")  # the recorded recommendation (info["sampling"])
    assert qm9["passes"].endswith("M") and qm9["train"].endswith("min")


def test_json_table_holds_the_same_fields(capsys, table):
    assert main(["models", "--json"]) == 0
    cards = {c["name"]: c for c in json.loads(capsys.readouterr().out)["models"]}
    assert sorted(cards) == SHIPPED
    assert cards["qm9"]["conditioning"] == [] and cards["qm9"]["bonds"] == "distance rule"
    assert cards["drugs"]["bonds"] == "model" and cards["drugs"]["hydrogens"] == "added by RDKit"
    assert cards["qm9-alpha"]["conditioning"] == ["alpha"]
    for name, card in cards.items():
        row = table[name]
        assert row["dataset"] == card["dataset"] and int(row["atoms"]) == card["max_atoms"]
        assert row["elements"].split() == card["elements"]
        assert row["sampler"].split()[:2] == [card["sampling"]["method"], str(card["sampling"]["steps"])]
        assert card["file_bytes"] == (PRETRAINED_DIR / f"{name}.pt").stat().st_size


def test_details_of_shipped_model(capsys):
    assert main(["models", "drugs"]) == 0
    out = capsys.readouterr().out
    for text in ("model drugs", "hydrogens     added by RDKit", "bonds         the model's own", "parameters",
                 "config.model", "config.diffusion", "bonds: categorical", "note", "provenance", "source:"):
        assert text in out, text
    assert main(["models", "drugs", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["parameters"] > 0 and card["config"]["diffusion"]["bonds"] == "categorical"
    assert card["provenance"]["source"] and card["note"]


def _training_checkpoint(path: Path) -> int:
    """A training-style checkpoint (optimizer and counters) of a tiny fragment-trained conditional model."""
    config = ExperimentConfig.from_dict({
        "data": {"dataset": "tinyset", "conditioning": ["alpha"]},
        "model": {"hidden_nf": 8, "n_layers": 1, "fragment_input": True},
        "diffusion": {"timesteps": 20},
    })
    process = build_model(config, 3, context_nf=1)
    opt = torch.optim.AdamW(process.parameters())
    save_checkpoint(path, {
        "config": config.to_dict(),
        "stats": {"dataset": "tinyset", "elements": ["H", "C", "O"], "n_atoms_hist": {3: 2, 5: 1},
                  "max_n_atoms": 5, "context_nf": 1, "conditioning": ["alpha"]},
        "model": process.state_dict(), "ema": process.state_dict(), "optimizer": opt.state_dict(),
        "state": {"step": 12, "epoch": 1, "elapsed_s": 90.0, "best_val_nll": float("inf")},
    })
    return sum(p.numel() for p in process.parameters())


def test_details_of_training_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "run" / "last.pt"
    n_params = _training_checkpoint(ckpt)
    assert main(["models", str(ckpt)]) == 0
    out = capsys.readouterr().out
    for text in (f"model {ckpt}", "training (resumable)", "tinyset", "H C O", "max atoms     5", "alpha",
                 "fragment-trained", "ancestral, 20 steps (default: none recorded)", "1.5 min",
                 "training state", "step: 12", "fragment_input: true"):
        assert text in out, text
    assert main(["models", str(ckpt), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)  # strict JSON: the infinite NLL became null
    assert card["fragment_input"] is True and card["fixed_atoms"] == "fragment-trained"
    assert card["conditioning"] == ["alpha"] and card["max_atoms"] == 5 and card["train_minutes"] == 1.5
    assert card["train_state"]["best_val_nll"] is None and card["checkpoint"] == "training (resumable)"
    assert card["parameters"] == n_params and card["config"]["model"]["hidden_nf"] == 8


@pytest.mark.parametrize("kind", ["unknown", "missing", "corrupt", "hostile", "foreign"])
def test_bad_model_one_line_exit_2(kind, tmp_path, capsys):
    marker = tmp_path / "ran"
    target = {"unknown": "no-such-model", "missing": str(tmp_path / "gone.pt")}.get(kind, str(tmp_path / "x.pt"))
    if kind == "corrupt":
        Path(target).write_bytes(os.urandom(2000))
    elif kind == "hostile":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"config": Evil()}, target)
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, target)
    assert main(["models", target]) == 2
    line = _err_line(capsys)
    assert line.startswith("moldiff: error: ") and "shipped models: " in line and "qm9-alpha" in line
    assert {"unknown": "unknown model", "missing": "not found", "corrupt": "corrupt", "hostile": "refused",
            "foreign": "not a moldiff checkpoint"}[kind] in line
    assert not marker.exists()
