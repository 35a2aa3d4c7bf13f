"""The registry of model families: ``kind`` name -> builder ``(config, spec) -> EquivariantDiffusion``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moldiff.config import ExperimentConfig
from moldiff.diffusion.process import EquivariantDiffusion


@dataclass(frozen=True)
class ModelSpec:
    """What a builder needs beyond the config: facts about the data the model is for.

    Attributes:
        num_classes: size of the element vocabulary ``K``.
        context_nf: number of conditioning properties (0: unconditional).
        type_prior: ``[K]`` training-set element frequencies (the limit of categorical atom types);
            ``None`` gives a uniform limit (a loaded checkpoint restores its own).
        bond_prior: ``[K_b]`` training-set frequencies of the bond classes over all atom pairs (the
            limit of a categorical bond channel; ``None``: uniform, or the checkpoint's own).
    """

    num_classes: int
    context_nf: int = 0
    type_prior: torch.Tensor | None = None
    bond_prior: torch.Tensor | None = None


Builder = Callable[[ExperimentConfig, ModelSpec], EquivariantDiffusion]
#: Registered model families.
MODEL_KINDS: dict[str, Builder] = {}


def register_model(kind: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``kind`` (names must be unique)."""

    def wrap(fn: Builder) -> Builder:
        if kind in MODEL_KINDS:
            raise ValueError(f"model kind {kind!r} is already registered")
        MODEL_KINDS[kind] = fn
        return fn

    return wrap


def build_model(
    config: ExperimentConfig, num_classes: int, context_nf: int = 0, type_prior: torch.Tensor | None = None,
    bond_prior: torch.Tensor | None = None,
) -> EquivariantDiffusion:
    """Build the model of ``config.model.kind``; ``ValueError`` names the known kinds for an unknown one.

    >>> cfg = ExperimentConfig.from_dict({"model": {"hidden_nf": 8, "n_layers": 1}})
    >>> type(build_model(cfg, 5).denoiser).__name__
    'EGNNDenoiser'
    """
    kind = config.model.kind
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](config, ModelSpec(num_classes, context_nf, type_prior, bond_prior))
