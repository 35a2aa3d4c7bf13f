"""One-file checkpoints: weights, EMA weights, config, dataset statistics, moldiff version.

Everything ``moldiff sample`` needs travels in the file (vocabulary, ``p(N)`` histogram,
normalisation, property statistics), so sampling needs no dataset. Files are written atomically.

Checkpoints hold plain types only (dicts, lists, strings, numbers, tensors) and are read with
``torch.load(..., weights_only=True)``: a file that would need to unpickle any other object (and so
could run code while loading) is refused before anything in it runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "config", "stats", "model", "ema")


def to_plain(obj: Any) -> Any:
    """``obj`` with NumPy scalars/arrays, tuples and paths turned into types ``weights_only`` loading accepts.

    Dicts, lists, tuples, strings, numbers, ``None`` and tensors pass through (recursively);
    NumPy arrays become tensors, NumPy scalars Python numbers, paths strings. Anything else raises
    ``TypeError`` at save time, rather than producing a file that loads only unsafely.
    """
    import numpy as np

    if isinstance(obj, np.generic):  # first: np.float64 is also a float, but pickles as a NumPy object
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device)):
        return obj
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype.kind in "biuf" else to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (plain data and tensors only)")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (must hold ``config``, ``stats``, ``model``, ``ema``)."""
    from moldiff import __version__

    payload = to_plain(dict(payload))
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
    payload = _numpy_scalars_to_python(safe_torch_load(path, map_location=map_location, what="checkpoint"))
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        raise ValueError(f"checkpoint {path} is not a moldiff checkpoint (missing keys)")
    if payload["format_version"] > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {payload['format_version']}, newer than this moldiff")
    return payload


def _numpy_scalar_globals() -> list[Any]:
    """NumPy scalar reconstruction (older checkpoints hold e.g. ``np.str_`` element symbols): data, not code."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import scalar
    return [scalar, np.dtype, *{type(np.dtype(c)) for c in "?bhilqBHILQefdgU"}]


def _numpy_scalars_to_python(obj: Any) -> Any:
    """Replace NumPy scalars inside dicts / lists / tuples by Python ones (dicts and lists in place)."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _numpy_scalars_to_python(v)
    elif isinstance(obj, list):
        obj[:] = [_numpy_scalars_to_python(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_numpy_scalars_to_python(v) for v in obj)
    return obj


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "file") -> Any:
    """``torch.load`` restricted to plain types and tensors (``weights_only=True``); ``ValueError`` otherwise.

    A pickle that references any other callable (``os.system``, a class, ...) is refused by torch's
    restricted unpickler before the reference is resolved, so nothing in the file runs. NumPy
    scalars (``np.float64``, ``np.str_``, as older moldiff versions stored) are allowed: they are data.
    """
    import pickle
    import warnings

    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. torch's "pickle protocol 4" notice on a foreign pickle
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # the restricted unpickler stopped: nothing in the file ran
        import re

        text = str(exc)
        glob = re.search(r"GLOBAL (\S+)", text)
        if glob:  # a reference to a callable or class: the way pickles run code
            raise ValueError(f"{what} {path} refused: it references {glob.group(1)}, which could run code on "
                             "loading (moldiff files hold only plain data and tensors)") from None
        op = re.search(r"Unsupported operand \d+", text)
        raise ValueError(f"{what} {path} is corrupt or not a moldiff {what}: refused, it is not plain data and "
                         f"tensors ({op.group(0) if op else 'unreadable pickle'})") from None
    except MemoryError:
        raise ValueError(f"{what} {path} is corrupt or not a moldiff {what} (MemoryError)") from None
    except Exception as exc:  # torch raises many types for truncated / non-checkpoint files
        raise ValueError(f"{what} {path} is corrupt or not a moldiff {what} ({type(exc).__name__})") from None


def load_state(module: torch.nn.Module, state_dict: Any, path: str | Path, what: str = "weights") -> None:
    """``module.load_state_dict`` with a one-line ``ValueError`` when the checkpoint's architecture differs."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first[1:] if ln.strip()), first[0] if first else type(exc).__name__)
        raise ValueError(f"checkpoint {path} does not fit this model's architecture ({what}: "
                         f"{detail[:200]}); check the config (hidden_nf, n_layers, elements, conditioning)") from None


def grow_state_dict(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """``source`` fitted into ``target``'s shapes by zero-padding.

    Each tensor of ``source`` is copied into the leading block of a zero tensor of the target's shape.

    Used to start a conditional model from an unconditional one (``moldiff train --init``): the
    context adds input columns to the denoiser's first layer and output rows to its last; zero
    columns make the grown network compute exactly what the source did, whatever the context.
    Returns ``(state, grown_keys)``; raises ``ValueError`` when the keys differ or a tensor would shrink.
    """
    if set(target) != set(source):
        diff = sorted(set(target) ^ set(source))
        raise ValueError(f"parameter names differ ({', '.join(diff[:3])}{', ...' if len(diff) > 3 else ''})")
    out, grown = {}, []
    for key, want in target.items():
        have = source[key]
        if have.shape == want.shape:
            out[key] = have
            continue
        if have.dim() != want.dim() or any(h > w for h, w in zip(have.shape, want.shape, strict=True)):
            raise ValueError(f"{key}: shape {tuple(have.shape)} does not fit {tuple(want.shape)}")
        big = torch.zeros(want.shape, dtype=have.dtype, device=want.device)
        big[tuple(slice(0, h) for h in have.shape)] = have
        out[key], _ = big, grown.append(key)
    return out, grown


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
