"""The ``egnn`` and ``eqattn`` families: EDM's EGNN or an equivariant attention denoiser inside the Gaussian process."""

from __future__ import annotations

from moldiff.conditioning import context_width
from moldiff.config import ExperimentConfig
from moldiff.constants import BOND_ORDERS
from moldiff.diffusion.categorical import CategoricalDiffusion
from moldiff.diffusion.parameterization import LossWeighting, Parameterization
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.diffusion.time_sampling import TimeSampler
from moldiff.models.registry import ModelSpec, register_model
from moldiff.nn.denoiser import EGNNDenoiser

#: Bond classes of a categorical bond channel: 0 = no bond, then the codes of ``BOND_ORDERS`` (1..4).
BOND_CLASSES = 1 + len(BOND_ORDERS)


@register_model("egnn")
@register_model("eqattn")
def build_egnn(config: ExperimentConfig, spec: ModelSpec) -> EquivariantDiffusion:
    """Wire an :class:`EquivariantDiffusion` around an :class:`EGNNDenoiser`.

    ``model.kind`` names the denoiser's backbone: ``egnn`` (EDM's EGNN) or ``eqattn``
    (:class:`moldiff.nn.attention.EquivariantAttention`, with ``model.heads`` and ``model.edge_nf``);
    everything else is shared.

    A model trained with context dropout gets ``2 * context_nf`` context channels
    (:func:`moldiff.conditioning.context_width`); ``diffusion.atom_types: categorical`` adds a
    :class:`CategoricalDiffusion` whose limit is ``spec.type_prior``; ``diffusion.bonds: categorical``
    one over ``1 + len(BOND_ORDERS)`` bond classes (0 = no bond) with limit ``spec.bond_prior``.
    """
    m, d = config.model, config.diffusion
    width = context_width(spec.context_nf, config.train.context_dropout)
    denoiser = EGNNDenoiser(
        in_node_nf=spec.num_classes + int(d.include_charges), context_nf=width, hidden_nf=m.hidden_nf,
        n_layers=m.n_layers, attention=m.attention, tanh=m.tanh, coords_range=m.coords_range,
        norm_constant=m.norm_constant, normalization_factor=m.normalization_factor,
        node_projection=m.node_projection, precision=m.precision, self_condition=m.self_condition,
        bond_classes=BOND_CLASSES if d.bonds == "categorical" else 0, fragment_input=m.fragment_input,
        backbone=m.kind, heads=m.heads, edge_nf=m.edge_nf, rbf_cutoff=m.rbf_cutoff,
    )
    schedule = NoiseSchedule(d.noise_schedule, d.timesteps, d.noise_precision)
    type_process = None
    if d.atom_types == "categorical":
        type_process = CategoricalDiffusion(spec.num_classes, schedule, prior=spec.type_prior)
    bond_process = None
    if d.bonds == "categorical":
        bond_process = CategoricalDiffusion(BOND_CLASSES, schedule, prior=spec.bond_prior)
    return EquivariantDiffusion(
        denoiser, schedule, spec.num_classes, include_charges=d.include_charges, norm_values=d.norm_values,
        loss_type=d.loss_type, parameterization=Parameterization(d.parameterization, d.sigma_data),
        weighting=LossWeighting(d.loss_weighting, *d.snr_clamp), type_process=type_process,
        type_loss_weight=d.type_loss_weight, bond_process=bond_process, bond_loss_weight=d.bond_loss_weight,
        time_sampler=TimeSampler(d.time_sampling, d.time_sampling_params),
    )
