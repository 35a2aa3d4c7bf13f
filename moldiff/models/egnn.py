"""The ``egnn`` family: EDM's EGNN denoiser inside the Gaussian process (with the options of ``diffusion``)."""

from __future__ import annotations

from moldiff.conditioning import context_width
from moldiff.config import ExperimentConfig
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.parameterization import LossWeighting
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.models.registry import ModelSpec, register_model
from moldiff.nn.denoiser import EGNNDenoiser


@register_model("egnn")
def build_egnn(config: ExperimentConfig, spec: ModelSpec) -> EquivariantDiffusion:
    """Wire an :class:`EquivariantDiffusion` around an :class:`EGNNDenoiser`.

    A model trained with context dropout gets ``2 * context_nf`` context channels
    (:func:`moldiff.conditioning.context_width`); ``diffusion.atom_types: categorical`` adds a
    :class:`CategoricalDiffusion` whose limit is ``spec.type_prior``.
    """
    m, d = config.model, config.diffusion
    width = context_width(spec.context_nf, config.train.context_dropout)
    denoiser = EGNNDenoiser(
        in_node_nf=spec.num_classes + int(d.include_charges), context_nf=width, hidden_nf=m.hidden_nf,
        n_layers=m.n_layers, attention=m.attention, tanh=m.tanh, coords_range=m.coords_range,
        norm_constant=m.norm_constant, normalization_factor=m.normalization_factor,
        node_projection=m.node_projection, precision=m.precision, self_condition=m.self_condition,
    )
    schedule = NoiseSchedule(d.noise_schedule, d.timesteps, d.noise_precision)
    type_process = None
    if d.atom_types == "categorical":
        type_process = CategoricalDiffusion(spec.num_classes, schedule, prior=spec.type_prior)
    return EquivariantDiffusion(
        denoiser, schedule, spec.num_classes, include_charges=d.include_charges, norm_values=d.norm_values,
        loss_type=d.loss_type, parameterization=d.parameterization,
        weighting=LossWeighting(d.loss_weighting, *d.snr_clamp), type_process=type_process,
        type_loss_weight=d.type_loss_weight,
    )
