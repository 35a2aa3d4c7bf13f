"""Property-conditioned generation: the property registry, context normalisation, classifier-free guidance.

EDM (Hoogeboom et al. 2022, §5 of ``shared/reference/edm_protocol.md``) conditions on one global
property ``c`` per molecule, normalised as ``c_norm = (c − mean) / MAD`` with the validation split's
mean and MAD, broadcast to every atom and concatenated to ``h``. moldiff keeps that and adds:

* **any subset of properties**: the context is ``[B, C]`` in the order of ``config.data.conditioning``;
* **classifier-free guidance** (Ho & Salimans 2022), an extension that EDM does not have. A model
  trained with ``train.context_dropout = p > 0`` sees the context as ``[c_norm · keep, keep]``
  (``[B, 2C]``): ``keep`` is 0 with probability ``p``, so the "null" context (all zeros) differs
  from a property equal to its mean (``c_norm = 0``, ``keep = 1``). Sampling with weight ``w`` uses
  ``eps = (1 + w) eps_cond − w eps_uncond``; ``w = 0`` is exactly the plain conditional model.

Context layouts (``context_width``):

=====================  ===========================  ==========
training dropout        denoiser context             width
=====================  ===========================  ==========
``0`` (EDM)            ``c_norm``                    ``C``
``> 0`` (guidance)     ``[c_norm · keep, keep]``     ``2 C``
=====================  ===========================  ==========
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from moldiff.constants import QM9_TARGETS
from moldiff.sampling.priors import PropertyDistribution
from moldiff.types import ContextNormalizer, DatasetStats, EpsFn, NetworkOutput


@dataclass(frozen=True)
class PropertySpec:
    """A conditioning property of QM9.

    Attributes:
        name: key in the dataset and in ``config.data.conditioning``.
        unit: unit of the raw value (EDM reports its MAEs in these units).
        description: one-line meaning.
    """

    name: str
    unit: str
    description: str


#: The six properties of EDM's conditional benchmark (Table 3), in the paper's order.
PROPERTIES: dict[str, PropertySpec] = {
    p.name: p
    for p in (
        PropertySpec("alpha", QM9_TARGETS["alpha"], "isotropic polarisability"),  # units: one table,
        PropertySpec("gap", QM9_TARGETS["gap"], "HOMO-LUMO gap"),  # moldiff.constants.QM9_TARGETS
        PropertySpec("homo", QM9_TARGETS["homo"], "HOMO energy"),
        PropertySpec("lumo", QM9_TARGETS["lumo"], "LUMO energy"),
        PropertySpec("mu", QM9_TARGETS["mu"], "dipole moment"),
        PropertySpec("Cv", QM9_TARGETS["Cv"], "heat capacity at 298 K minus 2.981 N_atoms"),
    )
}
PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTIES)


def check_properties(
    names: Sequence[str], allowed: Sequence[str] = PROPERTY_NAMES, what: str = ""
) -> tuple[str, ...]:
    """Validate property names.

    Args:
        names: requested property names.
        allowed: the names accepted here (default: the registry; for a trained model: its conditioning).
        what: optional context for the message, e.g. ``"model 'qm9-alpha' was trained on"``.

    Returns:
        ``names`` as a tuple.

    Raises:
        ValueError: one line naming the bad property and listing the allowed ones.

    >>> check_properties(["alpha", "Cv"])
    ('alpha', 'Cv')
    """
    names = tuple(names)
    bad = [n for n in names if n not in allowed]
    if bad:
        kind = "unknown property" if bad[0] not in PROPERTIES else "property not conditioned on"
        where = f" ({what})" if what else ""
        raise ValueError(f"{kind} {bad[0]!r}; allowed{where}: {', '.join(allowed) or 'none'}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate property in {list(names)}")
    return names


def parse_targets(items: Sequence[str]) -> dict[str, float]:
    """Parse ``["alpha=80", "gap=6000"]`` (CLI ``--target``) into ``{"alpha": 80.0, "gap": 6000.0}``.

    Raises:
        ValueError: malformed item, non-numeric value or a repeated property.

    >>> parse_targets(["alpha=80", "mu = 2.5"])
    {'alpha': 80.0, 'mu': 2.5}
    """
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"target {item!r} must look like NAME=VALUE, e.g. alpha=80")
        try:
            val = float(value)
        except ValueError:
            raise ValueError(f"target {item!r}: {value.strip()!r} is not a number") from None
        if val != val or val in (float("inf"), float("-inf")):
            raise ValueError(f"target {item!r} must be finite")
        if key in out:
            raise ValueError(f"property {key!r} given twice")
        out[key] = val
    return out


# ---------------------------------------------------------------------- classifier-free guidance
def context_width(num_properties: int, context_dropout: float) -> int:
    """Denoiser context width: ``C`` (EDM) or ``2 C`` when trained with context dropout (guidance).

    >>> context_width(1, 0.0), context_width(2, 0.1)
    (1, 4)
    """
    return num_properties * (2 if num_properties and context_dropout > 0 else 1)


def with_keep_flags(context: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` normalised context, ``[B]`` or ``[B, C]`` keep mask -> ``[B, 2C]`` ``[c · keep, keep]``."""
    keep = keep.to(context.dtype)
    if keep.ndim == 1:
        keep = keep[:, None].expand_as(context)
    return torch.cat([context * keep, keep], dim=1)


def null_context(num: int, num_properties: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``[num, 2C]`` zeros: the "no property given" context of a guidance-trained model."""
    return torch.zeros(num, 2 * num_properties, dtype=dtype, device=device)


def drop_context(context: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time context dropout: each molecule's context is nulled with probability ``p``.

    Args:
        context: ``[B, C]`` normalised properties.
        p: dropout probability in ``[0, 1)``.
        generator: CPU RNG (reproducible, resumable training).

    Returns:
        ``[B, 2C]`` ``[c · keep, keep]``.
    """
    keep = torch.rand(context.shape[0], generator=generator) >= p
    return with_keep_flags(context, keep.to(context.device))


def guided_eps_fn(denoise: Callable[..., NetworkOutput], batch: torch.Tensor,
                  context: torch.Tensor, uncond_context: torch.Tensor, weight: float) -> EpsFn:
    """Classifier-free guided noise prediction for :meth:`Sampler.sample`'s ``eps_fn``.

    ``eps = (1 + w) eps(z, t, c) − w eps(z, t, ∅)``. With ``w = 0`` the unconditional pass is skipped,
    so the result is bit-identical to sampling with ``context`` alone.

    Args:
        denoise: ``(pos, h, t, batch, context) -> (eps_pos, eps_h)``, e.g. ``process.denoise``.
        batch: ``[N]`` molecule index of every atom.
        context: ``[B, 2C]`` conditional context (keep flags 1).
        uncond_context: ``[B, 2C]`` null context.
        weight: guidance weight ``w >= 0`` (``w = 0``: plain conditional sampling).

    Returns:
        ``eps_fn(z_pos [N, 3], z_h [N, F], t [B]) -> (eps_pos [N, 3], eps_h [N, F])``.
    """
    if weight < 0:
        raise ValueError(f"guidance weight must be >= 0, got {weight}")

    def eps_fn(z_pos: torch.Tensor, z_h: torch.Tensor, t: torch.Tensor) -> NetworkOutput:
        cond = denoise(z_pos, z_h, t, batch, context)
        if weight == 0:
            return cond
        unc = denoise(z_pos, z_h, t, batch, uncond_context)
        return tuple((1 + weight) * a - weight * b for a, b in zip(cond, unc, strict=True))  # type: ignore[return-value]

    return eps_fn


# ---------------------------------------------------------------------- sampling inputs
def property_distribution(stats: DatasetStats | Mapping[str, Any]) -> PropertyDistribution:
    """The ``p(c | N)`` histograms stored in a checkpoint's statistics (a dict is read as :class:`DatasetStats`).

    Raises:
        ValueError: the checkpoint predates them (``moldiff train`` stores them since 0.1.0).
    """
    stats = DatasetStats.from_dict(stats)
    if stats.property_distribution is None:
        raise ValueError("this checkpoint has no property histograms p(c | N); retrain it with moldiff train")
    return PropertyDistribution.from_dict(stats.property_distribution)


@dataclass
class ConditionalInputs:
    """What a conditional model samples with.

    Attributes:
        num_atoms: ``[B]`` atom counts.
        values: ``[B, C]`` raw property values (targets, or draws from ``p(c | N)``).
        context: ``[B, C]`` or ``[B, 2C]`` float32 denoiser context.
        guidance: classifier-free guidance weight (``None``/``0``: none).
    """

    num_atoms: torch.Tensor
    values: torch.Tensor
    context: torch.Tensor
    guidance: float | None = None

    def eps_fn(self, process: Any, counts: torch.Tensor, context: torch.Tensor) -> EpsFn:
        """Guided ``eps_fn`` for one sampling batch of ``counts [b]`` molecules with ``context [b, 2C]``."""
        param = next(process.parameters())
        batch = torch.repeat_interleave(torch.arange(len(counts)), counts).to(param.device)
        ctx = context.to(param.device, param.dtype)
        null = null_context(len(counts), ctx.shape[1] // 2, param.dtype, param.device)
        return guided_eps_fn(process.denoise, batch, ctx, null, float(self.guidance or 0.0))


def conditional_inputs(model: Any, num: int, num_atoms: int | Sequence[int] | None,
                       target: Mapping[str, float] | None, guidance: float | None,
                       generator: torch.Generator | None = None,
                       allow_extrapolation: bool = False) -> ConditionalInputs:
    """Atom counts and context for sampling ``num`` molecules from a conditional :class:`MolDiff`.

    Args:
        model: a conditional ``moldiff.pipeline.MolDiff``.
        num: number of molecules.
        num_atoms: fixed atom count(s), or ``None`` for ``p(N | target)`` (``p(N)`` without target).
        target: ``{name: raw value}`` for any subset of ``model.conditioning``; the others are drawn
            from ``p(c | N)``.
        guidance: guidance weight ``w >= 0``; ``w > 0`` needs a model trained with context dropout.
        generator: RNG.
        allow_extrapolation: accept a target outside the training range ``[min, max]`` of the
            property (with a warning); refused otherwise, since such samples are mostly scattered,
            disconnected atoms.

    Returns:
        :class:`ConditionalInputs`.

    Raises:
        ValueError: unknown/unconditioned property, negative or unsupported guidance, bad atom count,
            target outside the training range (unless ``allow_extrapolation``).
    """
    keys = tuple(model.conditioning)
    target = dict(target or {})
    check_properties(list(target), keys, what=f"model {model.name!r} is conditioned on")
    flagged = model.config.train.context_dropout > 0
    if guidance is not None and guidance < 0:
        raise ValueError(f"guidance weight must be >= 0, got {guidance}")
    if guidance and not flagged:
        raise ValueError(f"model {model.name!r} was trained without context dropout, so it cannot use "
                         "guidance; train with train.context_dropout > 0")
    pdist = property_distribution(model.stats)
    for k, v in target.items():
        lo, hi = pdist.range(k)
        if not lo <= v <= hi and not allow_extrapolation:
            unit = f" {PROPERTIES[k].unit}" if k in PROPERTIES else ""
            raise ValueError(f"target {k}={v:g} is outside the training range [{lo:.4g}, {hi:.4g}]{unit} of "
                             f"model {model.name!r}; pass --allow-extrapolation (allow_extrapolation=True) "
                             "to sample anyway")
        if not lo <= v <= hi:
            warnings.warn(f"target {k}={v:g} is outside the training range [{lo:.4g}, {hi:.4g}] "
                          f"{PROPERTIES[k].unit if k in PROPERTIES else ''}; expect poor control",
                          UserWarning, stacklevel=3)
    if num_atoms is None:
        prior = pdist.node_posterior(target, model.node_distribution) if target else model.node_distribution
        counts = prior.sample(num, generator=generator)
    else:
        counts = torch.as_tensor([num_atoms] * num if isinstance(num_atoms, int) else list(num_atoms))
        if counts.numel() != num or int(counts.min()) < 1 or int(counts.max()) > model.max_atoms:
            raise ValueError(f"number of atoms must be between 1 and the model's limit {model.max_atoms}")
    free = tuple(k for k in keys if k not in target)
    drawn = pdist.sample(counts, free, generator=generator) if free else torch.empty(num, 0)
    cols = {k: drawn[:, free.index(k)] if k in free else torch.full((num,), target[k]) for k in keys}
    norm = ContextNormalizer(model.stats.property_norms, keys)
    values = torch.stack([cols[k].double() for k in keys], dim=1)
    context = norm.normalize(values)
    if flagged:
        context = with_keep_flags(context, torch.ones(num))
    return ConditionalInputs(num_atoms=counts, values=values, context=context.float(), guidance=guidance)


def describe(stats: DatasetStats | Mapping[str, Any], keys: Sequence[str]) -> str:
    """One line per property: unit, training mean/MAD and range (for ``--help``-style listings)."""
    lines = []
    stats = DatasetStats.from_dict(stats)
    norms = stats.property_norms
    ranges = (stats.property_distribution or {}).get("ranges", {})  # (min, max) per property
    for k in keys:
        spec = PROPERTIES.get(k)
        mean, mad = norms.get(k, (float("nan"), float("nan")))
        lo, hi = ranges.get(k, (float("nan"), float("nan")))
        unit = spec.unit if spec else ""
        lines.append(f"{k} [{unit}]: mean {mean:.4g}, MAD {mad:.4g}, training range [{lo:.4g}, {hi:.4g}]")
    return "\n".join(lines)


__all__ = [
    "ConditionalInputs",
    "PROPERTIES",
    "PROPERTY_NAMES",
    "PropertySpec",
    "ContextNormalizer",
    "check_properties",
    "conditional_inputs",
    "context_width",
    "describe",
    "drop_context",
    "guided_eps_fn",
    "null_context",
    "parse_targets",
    "property_distribution",
    "with_keep_flags",
]
