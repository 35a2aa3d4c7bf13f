"""Build a diffusion model (process + EGNN denoiser) from a config."""

from __future__ import annotations

import torch

from moldiff.conditioning import context_width
from moldiff.config import ExperimentConfig
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.parameterization import LossWeighting
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.nn.denoiser import EGNNDenoiser


def build_process(
    config: ExperimentConfig, num_classes: int, context_nf: int = 0, type_prior: torch.Tensor | None = None,
) -> EquivariantDiffusion:
    """Wire an :class:`EquivariantDiffusion` with an :class:`EGNNDenoiser` from a config.

    ``context_nf`` is the number of conditioning properties; a model trained with context dropout
    gets ``2 * context_nf`` context channels (:func:`moldiff.conditioning.context_width`).
    ``type_prior`` (``[K]`` atom-type frequencies of the training set) is the limit distribution of
    categorical atom types (uniform if ``None``; a loaded checkpoint restores its own).
    """
    m, d = config.model, config.diffusion
    width = context_width(context_nf, config.train.context_dropout)
    denoiser = EGNNDenoiser(
        in_node_nf=num_classes + int(d.include_charges), context_nf=width, hidden_nf=m.hidden_nf,
        n_layers=m.n_layers, attention=m.attention, tanh=m.tanh, coords_range=m.coords_range,
        norm_constant=m.norm_constant, normalization_factor=m.normalization_factor,
        node_projection=m.node_projection, precision=m.precision,
    )
    schedule = NoiseSchedule(d.noise_schedule, d.timesteps, d.noise_precision)
    type_process = None
    if d.atom_types == "categorical":
        type_process = CategoricalDiffusion(num_classes, schedule, prior=type_prior)
    return EquivariantDiffusion(
        denoiser, schedule, num_classes, include_charges=d.include_charges, norm_values=d.norm_values,
        loss_type=d.loss_type, parameterization=d.parameterization,
        weighting=LossWeighting(d.loss_weighting, *d.snr_clamp), type_process=type_process,
        type_loss_weight=d.type_loss_weight,
    )
