"""What a checkpoint is and what it can do: the data behind ``moldiff models``.

A *model card* is a plain dict (JSON-ready) describing one checkpoint: dataset, vocabulary, size
limit, how hydrogens and bonds come about, conditioning, fixed-atom support, the recommended
sampler, the recorded training effort, and (in full) the config sections and provenance. Files are
read with the safe loader (:func:`moldiff.checkpoint.load_checkpoint`, ``weights_only``): a hostile
file is refused without running any of it.

>>> from moldiff.model_card import describe_model, format_table
>>> card = describe_model("qm9")              # doctest: +SKIP
>>> card["conditioning"], card["bonds"]       # doctest: +SKIP
([], 'distance rule')
>>> print(format_table([card]))               # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from moldiff.checkpoint import load_checkpoint
from moldiff.pipeline import PRETRAINED_DIR, from_checkpoint, resolve_checkpoint, shipped_models

#: ``hydrogens`` values: the model places every H / RDKit adds them to the written heavy-atom molecules /
#: a heavy-atom model without a bond channel (no hydrogens in its output).
HYDROGENS_EXPLICIT, HYDROGENS_RDKIT, HYDROGENS_NONE = "explicit", "added by RDKit", "none (heavy atoms only)"
#: ``bonds`` values: the model's own bond channel, or EDM's distance tables applied afterwards.
BONDS_MODEL, BONDS_DISTANCE = "model", "distance rule"
#: ``fixed_atoms`` values (``moldiff sample --fix``).
FIX_FRAGMENT, FIX_REPAINT = "fragment-trained", "RePaint replacement"

#: ``info`` keys shown as columns; every other ``info`` key is provenance (detail view).
_PASSES_KEYS = ("molecule_passes", "molecule_passes_approx")
_NOTE_KEYS = ("note", "description")
_SHOWN_INFO = frozenset({"sampling", *_PASSES_KEYS, *_NOTE_KEYS, "train_minutes", "train_seconds"})


def describe_model(name_or_path: str | Path, full: bool = True) -> dict[str, Any]:
    """The model card of a shipped model name or a checkpoint path (training ``last.pt`` included).

    Args:
        name_or_path: shipped name (``moldiff.shipped_models()``) or ``.pt`` path, resolved exactly as
            ``moldiff sample --model`` does (:func:`moldiff.pipeline.resolve_checkpoint`).
        full: add the detail fields (parameter count, config sections, note, provenance, training state).

    Returns:
        A JSON-ready dict; the keys of the table view come first (see :func:`format_table`).

    Raises:
        ValueError: unknown name, missing, corrupt, hostile or foreign file (one line, naming it).
    """
    path = resolve_checkpoint(name_or_path)
    payload = load_checkpoint(path)  # weights_only: refuses anything but plain data and tensors (and runs none)
    model = from_checkpoint(path)  # the same safe loader again (small files), building the model for its properties
    shipped = path.parent == PRETRAINED_DIR and not Path(name_or_path).exists()
    info = model.info
    method, steps = model.default_sampling
    churn, churn_range, final = model.default_noise
    if not model.config.data.remove_h:
        hydrogens = HYDROGENS_EXPLICIT
    else:
        hydrogens = HYDROGENS_RDKIT if model.adds_hydrogens else HYDROGENS_NONE
    card: dict[str, Any] = {
        "name": str(name_or_path),
        "path": str(path),
        "shipped": shipped,
        "dataset": model.stats.dataset or model.config.data.dataset,
        "elements": model.elements,
        "max_atoms": model.max_atoms,
        "hydrogens": hydrogens,
        "bonds": BONDS_MODEL if model.has_bonds else BONDS_DISTANCE,
        "conditioning": list(model.conditioning),
        "fragment_input": bool(model.process.fragment_input),
        "fixed_atoms": FIX_FRAGMENT if model.process.fragment_input else FIX_REPAINT,
        "sampling": {"method": method, "steps": steps or model.process.timesteps, "spacing": model.default_spacing,
                     "churn": churn, "churn_range": churn_range, "final": final,
                     "recorded": bool(info.get("sampling"))},
        "timesteps": model.process.timesteps,
        "molecule_passes": _first_number(info, _PASSES_KEYS),
        "train_minutes": _train_minutes(info, payload),
        "file_bytes": path.stat().st_size,
    }
    if not full:
        return _plain(card)
    config = model.config.to_dict()  # resolved: the stored sections with this version's defaults filled in
    card.update({
        "parameters": sum(p.numel() for p in model.process.parameters()),
        "checkpoint": "training (resumable)" if "optimizer" in payload else "exported (sampling only)",
        "format_version": payload.get("format_version"),
        "moldiff_version": payload.get("moldiff_version"),
        "split": model.config.data.split,
        "config": {"model": config["model"], "diffusion": config["diffusion"]},
        "note": next((str(info[k]) for k in _NOTE_KEYS if info.get(k)), None),
        "provenance": {k: v for k, v in info.items() if k not in _SHOWN_INFO},
        "train_state": payload.get("state"),
    })
    return _plain(card)


def describe_shipped(full: bool = False) -> list[dict[str, Any]]:
    """Model cards of every shipped model (``moldiff/pretrained/*.pt``), by name."""
    return [describe_model(name, full=full) for name in shipped_models()]


def _first_number(info: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if isinstance(info.get(key), (int, float)):
            return int(info[key])
    return None


def _train_minutes(info: dict[str, Any], payload: dict[str, Any]) -> float | None:
    """Recorded training time: ``info`` (``train_minutes`` / ``train_seconds``), else a training checkpoint's clock."""
    if isinstance(info.get("train_minutes"), (int, float)):
        return float(info["train_minutes"])
    if isinstance(info.get("train_seconds"), (int, float)):
        return info["train_seconds"] / 60
    state = payload.get("state")
    if isinstance(state, dict) and isinstance(state.get("elapsed_s"), (int, float)):
        return state["elapsed_s"] / 60
    return None


def _plain(obj: Any) -> Any:
    """Strict-JSON copy: tensors to lists, non-finite floats to ``None``, tuples to lists, keys to strings."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "tolist"):  # a tensor
        return _plain(obj.tolist())
    return str(obj)


# ============================================================================ text
def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.0f} kB"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _minutes(m: float | None) -> str:
    if m is None:
        return "-"
    return f"{m:.0f} min" if m >= 10 else f"{m:.1f} min" if m >= 1 else f"{m * 60:.0f} s"


def _sampler(s: dict[str, Any], short: bool = True) -> str:
    spacing = {"uniform": "", "quadratic": " q" if short else ", quadratic spacing",
               "logsnr": " l" if short else ", logsnr spacing"}[s["spacing"]]
    if s.get("churn"):
        spacing += f" c{s['churn']:g}" if short else f", noise injection (churn) {s['churn']:g}" + (
            " for t/T in [{:g}, {:g}]".format(*s["churn_range"]) if s.get("churn_range") else "")
    if s.get("final") == "mean":
        spacing += " mean" if short else ", last step: the clean estimate"
    return f"{s['method']} {s['steps']}{spacing}" if short else f"{s['method']}, {s['steps']} steps{spacing}"


_HYDROGENS_SHORT = {HYDROGENS_EXPLICIT: "model", HYDROGENS_RDKIT: "RDKit", HYDROGENS_NONE: "none"}
_FIX_SHORT = {FIX_FRAGMENT: "trained", FIX_REPAINT: "RePaint"}

#: Table columns: header and the cell of a card.
_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("name", lambda c: c["name"]),
    ("dataset", lambda c: c["dataset"]),
    ("elements", lambda c: " ".join(c["elements"])),
    ("atoms", lambda c: str(c["max_atoms"])),
    ("H", lambda c: _HYDROGENS_SHORT[c["hydrogens"]]),
    ("bonds", lambda c: "model" if c["bonds"] == BONDS_MODEL else "dist"),
    ("cond.", lambda c: ",".join(c["conditioning"]) or "-"),
    ("--fix", lambda c: _FIX_SHORT[c["fixed_atoms"]]),
    ("sampler", lambda c: _sampler(c["sampling"])),
    ("passes", lambda c: _count(c["molecule_passes"])),
    ("train", lambda c: _minutes(c["train_minutes"])),
    ("size", lambda c: _size(c["file_bytes"])),
)

LEGEND = ("atoms: largest training molecule. H: placed by the model, or added by RDKit to a heavy-atom model's "
          "output. bonds: the model's own, or EDM's distance rule. cond.: conditioning properties (--target). "
          "--fix: a fragment-trained model, or RePaint replacement. sampler: recommended method, steps, "
          "spacing (q quadratic, l log-SNR), noise injection (c). "
          "passes / train: molecule passes and minutes of training, where recorded. "
          "Details: moldiff models NAME_OR_PATH [--json]")


def format_table(cards: list[dict[str, Any]]) -> str:
    """One row per card (aligned columns, about 110 characters wide) and a short legend."""
    rows = [[head for head, _ in _COLUMNS]] + [[cell(c) for _, cell in _COLUMNS] for c in cards]
    widths = [max(len(r[k]) for r in rows) for k in range(len(_COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, "", *textwrap.wrap(LEGEND, width=max(80, len(lines[0])))])


def format_details(card: dict[str, Any], width: int = 100) -> str:
    """Every field of a full card (:func:`describe_model`), one per line, then config, note and provenance."""
    s = card["sampling"]
    conditioning = ", ".join(card["conditioning"]) or "none (unconditional)"
    fix = "RePaint replacement (not trained for fixed atoms; model.fragment_input false)"
    if card["fragment_input"]:
        fix = "fragment-trained (model.fragment_input): --fix feeds the fragment clean and flagged"
    train = [f"{card['molecule_passes']:,} molecule passes" if card["molecule_passes"] is not None else None,
             _minutes(card["train_minutes"]) if card["train_minutes"] is not None else None]
    fields = [
        ("path", f"{card['path']} ({_size(card['file_bytes'])})"),
        ("checkpoint", f"{card['checkpoint']}, format {card['format_version']}, moldiff {card['moldiff_version']}"),
        ("dataset", f"{card['dataset']} (split {card['split']})"),
        ("elements", " ".join(card["elements"])),
        ("max atoms", str(card["max_atoms"])),
        ("hydrogens", card["hydrogens"]),
        ("bonds", "the model's own (categorical bond channel)" if card["bonds"] == BONDS_MODEL
         else "distance rule (EDM's bond-length tables, after sampling)"),
        ("conditioning", conditioning),
        ("fixed atoms", fix),
        ("sampler", _sampler(s, short=False) + ("" if s["recorded"] else " (default: none recorded)")),
        ("diffusion T", str(card["timesteps"])),
        ("parameters", f"{card['parameters']:,}"),
        ("training", ", ".join(t for t in train if t) or "not recorded"),
    ]
    out = [f"model {card['name']}"] + [f"  {k:<13} {v}" for k, v in fields]
    for section in ("model", "diffusion"):
        out.append(f"config.{section}")
        out += [f"  {k}: {_value(v)}" for k, v in card["config"][section].items()]
    if card["note"]:
        out.append("note")
        out += textwrap.wrap(card["note"], width=width, initial_indent="  ", subsequent_indent="  ")
    if card["provenance"]:
        out.append("provenance")
        for k, v in card["provenance"].items():
            out += textwrap.wrap(f"{k}: {_value(v)}", width=width, initial_indent="  ", subsequent_indent="    ")
    if card["train_state"]:
        out.append("training state")
        out += [f"  {k}: {_value(v)}" for k, v in card["train_state"].items()]
    return "\n".join(out)


def _value(v: Any) -> str:
    """A config / info value as YAML would show it (``true``, ``null``, ``1e-05``)."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
