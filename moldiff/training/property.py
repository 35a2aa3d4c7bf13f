"""Train and apply EDM's property classifier φ_c and the #Atoms baseline (edm_protocol.md §5.4).

φ_c is trained on D_a (``first_half``) with an L1 loss on the valid-split-normalised property, Adam
(``weight_decay=1e-16``) and cosine annealing; the epoch with the best validation MAE is kept. The
#Atoms baseline is EDM's ``NumNodes`` model, ``Linear(1, 128) → SiLU → Linear(128, 1)`` on ``N / 29``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moldiff.data.arrays import MoleculeArrays
from moldiff.data.loader import MolLoader
from moldiff.nn.property_predictor import PropertyPredictor


def _batches(arrays: MoleculeArrays, rows: np.ndarray, key: str, norm: tuple[float, float], batch_size: int,
             shuffle: bool, seed: int = 0) -> MolLoader:
    return MolLoader(arrays, rows, batch_size=batch_size, shuffle=shuffle, seed=seed, context_keys=(key,),
                     context_norms={key: norm})


@torch.no_grad()
def predict_rows(model: PropertyPredictor, arrays: MoleculeArrays, rows: np.ndarray, key: str,
                 norm: tuple[float, float], batch_size: int = 256) -> np.ndarray:
    """``[len(rows)]`` raw-unit predictions of φ_c for dataset molecules ``rows`` (in order)."""
    model.eval()
    out = [model(mb.pos, mb.one_hot, mb.batch, mb.num_graphs)
           for mb in _batches(arrays, rows, key, norm, batch_size, shuffle=False)]
    return torch.cat(out).double().numpy() * norm[1] + norm[0]


@torch.no_grad()
def predict_molecules(
    model: PropertyPredictor, molecules: Sequence[tuple[Sequence[str], np.ndarray]], elements: Sequence[str],
    norm: tuple[float, float], batch_size: int = 256,
) -> np.ndarray:
    """``[M]`` raw-unit predictions for ``(symbols, pos [n, 3])`` molecules, e.g. ``MolDiff.sample_raw``."""
    arrays = MoleculeArrays.from_molecules([(list(s), np.asarray(p)) for s, p in molecules])
    index = [list(arrays.elements).index(e) if e in arrays.elements else None for e in elements]
    loader = MolLoader(arrays, batch_size=batch_size, shuffle=False)
    preds = []
    model.eval()
    for mb in loader:  # re-map the sample's vocabulary onto the classifier's one-hot order
        one_hot = torch.zeros(mb.one_hot.shape[0], len(elements))
        for j, i in enumerate(index):
            if i is not None:
                one_hot[:, j] = mb.one_hot[:, i]
        preds.append(model(mb.pos, one_hot, mb.batch, mb.num_graphs))
    return torch.cat(preds).double().numpy() * norm[1] + norm[0]


def train_property_predictor(
    arrays: MoleculeArrays, train_rows: np.ndarray, val_rows: np.ndarray, key: str, norm: tuple[float, float],
    *, hidden_nf: int = 128, n_layers: int = 7, epochs: int = 1000, batch_size: int = 96, lr: float = 5e-4,
    max_minutes: float | None = None, seed: int = 0, log: Callable[[str], None] | None = None,
) -> tuple[PropertyPredictor, dict[str, Any]]:
    """Train φ_c for ``key`` (EDM ``main_qm9_prop.py``).

    Args:
        arrays: molecules.
        train_rows: ``[M]`` training rows (EDM: D_a).
        val_rows: validation rows for model selection (EDM: ``valid``).
        key: property name.
        norm: ``(mean, MAD)`` used to normalise the target.
        hidden_nf: feature width (EDM 128).
        n_layers: number of layers (EDM 7).
        epochs: epochs (EDM 1000); the cosine schedule spans them.
        batch_size: molecules per step (EDM 96).
        lr: Adam learning rate (EDM 5e-4; 1e-3 for gap/homo/lumo in the EGNN paper).
        max_minutes: stop early after this wall time (the schedule is then cut short).
        seed: RNG seed.
        log: optional progress callback.

    Returns:
        ``(model with the best-validation weights, info)``; ``info`` has ``val_mae`` (raw units),
        ``epochs``, ``steps`` and ``seconds``.
    """
    torch.manual_seed(seed)
    model = PropertyPredictor(len(arrays.elements), hidden_nf=hidden_nf, n_layers=n_layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-16)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    train = _batches(arrays, train_rows, key, norm, batch_size, shuffle=True, seed=seed)
    best, best_state, steps, t0, epoch = float("inf"), None, 0, time.perf_counter(), 0
    out_of_time = False
    for epoch in range(epochs):
        model.train()
        for mb in train.iter_batches(epoch):
            loss = (model(mb.pos, mb.one_hot, mb.batch, mb.num_graphs) - mb.context[:, 0]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if max_minutes is not None and time.perf_counter() - t0 > max_minutes * 60:
                out_of_time = True
                break
        sched.step()
        pred = predict_rows(model, arrays, val_rows, key, norm)
        mae = float(np.mean(np.abs(pred - arrays.properties[key][val_rows])))
        if mae < best:
            best, best_state = mae, copy.deepcopy(model.state_dict())
        if log:
            log(f"{key} classifier epoch {epoch}: val MAE {mae:.4g} (best {best:.4g}), {steps} steps")
        if out_of_time:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"val_mae": best, "epochs": epoch + 1, "steps": steps, "seconds": time.perf_counter() - t0}


def save_predictor(path: str | Path, model: PropertyPredictor, key: str, norm: tuple[float, float],
                   elements: Sequence[str], info: dict[str, Any] | None = None) -> None:
    """Write φ_c with its property name, normalisation and vocabulary to one file."""
    from moldiff.checkpoint import to_plain

    payload = {"hparams": model.hparams(), "state_dict": model.state_dict(), "key": key,
               "norm": [float(x) for x in norm], "elements": [str(e) for e in elements], "info": dict(info or {})}
    torch.save(to_plain(payload), Path(path))


def load_predictor(path: str | Path) -> tuple[PropertyPredictor, dict[str, Any]]:
    """Inverse of :func:`save_predictor`: ``(model, {"key", "norm", "elements", "info"})``."""
    from moldiff.checkpoint import load_state, safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"property classifier not found: {path}")
    payload = safe_torch_load(path, what="property classifier")
    keys = ("hparams", "state_dict", "key", "norm", "elements", "info")
    if not isinstance(payload, dict) or any(k not in payload for k in keys) or not isinstance(payload["hparams"], dict):
        raise ValueError(f"property classifier {path} is not a moldiff property classifier (missing keys)")
    try:
        model = PropertyPredictor(**payload["hparams"])
    except TypeError as exc:
        raise ValueError(f"property classifier {path} has unknown hyperparameters ({exc})") from None
    load_state(model, payload["state_dict"], path, what="property classifier")
    return model.eval(), {k: payload[k] for k in ("key", "norm", "elements", "info")}


def fit_num_nodes_baseline(
    n_atoms: np.ndarray, values: np.ndarray, norm: tuple[float, float], steps: int = 2000, lr: float = 1e-3,
    seed: int = 0,
) -> Callable[[np.ndarray], np.ndarray]:
    """EDM's #Atoms baseline: an MLP on ``N / 29`` fitted with L1 on the normalised property.

    Args:
        n_atoms: ``[M]`` atom counts of the training molecules (EDM: D_a).
        values: ``[M]`` raw property values.
        norm: ``(mean, MAD)``.
        steps: full-batch Adam steps.
        lr: learning rate.
        seed: RNG seed.

    Returns:
        ``predict(n_atoms [K]) -> [K]`` raw-unit predictions.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 128), nn.SiLU(), nn.Linear(128, 1)).double()
    x = torch.as_tensor(n_atoms, dtype=torch.float64)[:, None] / 29
    y = (torch.as_tensor(values, dtype=torch.float64) - norm[0]) / norm[1]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        loss = (net(x)[:, 0] - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def predict(n: np.ndarray) -> np.ndarray:
        return net(torch.as_tensor(n, dtype=torch.float64)[:, None] / 29)[:, 0].numpy() * norm[1] + norm[0]

    return predict


__all__ = ["fit_num_nodes_baseline", "load_predictor", "predict_molecules", "predict_rows", "save_predictor",
           "train_property_predictor"]
