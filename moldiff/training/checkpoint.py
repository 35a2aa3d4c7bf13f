"""One-file checkpoints: weights, EMA weights, config, dataset statistics, moldiff version.

Everything ``moldiff sample`` needs travels in the file (vocabulary, ``p(N)`` histogram,
normalisation, property statistics), so sampling needs no dataset. Files are written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "config", "stats", "model", "ema")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (must hold ``config``, ``stats``, ``model``, ``ema``)."""
    from moldiff import __version__

    payload = dict(payload)
    payload.setdefault("format_version", FORMAT_VERSION)
    payload.setdefault("moldiff_version", __version__)
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload misses {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; raises ``ValueError`` naming the problem if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated / non-checkpoint files
        raise ValueError(f"checkpoint {path} is corrupt or not a moldiff checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        raise ValueError(f"checkpoint {path} is not a moldiff checkpoint (missing keys)")
    if payload["format_version"] > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {payload['format_version']}, newer than this moldiff")
    return payload


def export_checkpoint(src: str | Path, dst: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a sampling-only copy of a training checkpoint (no optimizer/RNG state), e.g. to ship it.

    The training counters go to ``info["train_state"]``; ``info`` adds provenance (command, date, ...).
    Returns the written payload.
    """
    payload = load_checkpoint(src)
    out = {k: payload[k] for k in ("config", "stats", "model", "ema")}
    out["info"] = {**payload.get("info", {}), "train_state": payload.get("state", {}), **(info or {})}
    save_checkpoint(dst, out)
    return out
