"""Frozen configuration dataclasses, YAML load/save and validation.

Configs only *wire* components: every component takes explicit keyword arguments, and no component
receives a whole config. Unknown keys are rejected with ``ValueError``. Imports nothing from moldiff.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

_INT_FIELDS = frozenset({"max_molecules", "hidden_nf", "n_layers", "timesteps", "batch_size", "epochs", "max_steps"})


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_positive(name: str, value: float, allow_zero: bool = False, integer: bool | None = None) -> None:
    if value is None:
        return
    if integer is None:
        integer = name.split(".")[-1] in _INT_FIELDS
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if (value < 0) if allow_zero else (value <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _valid_schedule(name: object) -> bool:
    if name == "cosine":
        return True
    if not isinstance(name, str) or not name.startswith("polynomial_"):
        return False
    try:
        return float(name.split("_", 1)[1]) > 0
    except ValueError:
        return False


#: ``diffusion.time_sampling`` values with their parameter count (the names of
#: ``moldiff.diffusion.time_sampling.TIME_SAMPLERS``; a test checks).
TIME_SAMPLINGS = {"uniform": 0, "logit_normal": 2, "beta": 2}


def _check_time_sampling(name: object, params: object) -> tuple[float, ...]:
    """Validate ``diffusion.time_sampling`` and its params; returns the params as floats."""
    _check_choice("diffusion.time_sampling", name, tuple(TIME_SAMPLINGS))
    key = "diffusion.time_sampling_params"
    if not isinstance(params, (list, tuple)) or any(isinstance(v, bool) for v in params):
        raise ValueError(f"{key} must be a list of numbers, got {params!r}")
    try:
        values = tuple(float(v) for v in params)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a list of numbers, got {params!r}") from None
    n = TIME_SAMPLINGS[name]
    if len(values) not in ((0, n) if name == "logit_normal" else (n,)):
        raise ValueError(f"{key} for {name!r} must have {n} entries, got {list(params)!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{key} must be finite, got {list(params)!r}")
    if (name == "logit_normal" and values and values[1] <= 0) or (name == "beta" and min(values) <= 0):
        need = "scale > 0 in [loc, scale]" if name == "logit_normal" else "a > 0 and b > 0 in [a, b]"
        raise ValueError(f"{key} for {name!r} needs {need}, got {list(params)!r}")
    return values


@dataclass(frozen=True)
class DataConfig:
    """Which molecules to train on.

    Attributes:
        dataset: ``"qm9"`` or a path to a dataset written by ``moldiff data import``.
        split: training split: ``train`` (EDM's 100k), ``first_half`` (D_a) or ``second_half`` (D_b).
        max_molecules: use only the first N training molecules (``None``: all).
        remove_h: drop hydrogens (EDM's ``qm9_without_h``).
        conditioning: property names the model is conditioned on (empty: unconditional).
    """

    dataset: str = "qm9"
    split: str = "train"
    max_molecules: int | None = None
    remove_h: bool = False
    conditioning: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("data.split", self.split, ("train", "first_half", "second_half"))
        _check_positive("data.max_molecules", self.max_molecules)
        object.__setattr__(self, "conditioning", tuple(self.conditioning))


#: ``model.precision`` values (the same names as ``moldiff.nn.denoiser.PRECISIONS``; a test checks).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """EGNN dynamics hyper-parameters (defaults: EDM's released QM9 model).

    ``node_projection`` and ``precision`` change speed, not parameters: a checkpoint loads in any
    mode, and configs written before these fields existed get the defaults.

    Attributes:
        kind: the model family (``moldiff.models.MODEL_KINDS``; checked when the model is built).
        node_projection: compute the first edge-MLP layer per node and gather (same maths, fewer
            FLOPs; ``False`` is the per-edge form of EDM, kept for before/after benchmarks).
        self_condition: the network also reads its previous clean-molecule estimate (self-conditioning;
            in training half of the batches get the detached estimate of an extra forward pass).
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the invariant MLPs; positions, distances,
            the coordinate update and the centre-of-mass removal stay float32).
        fragment_input: the network reads one more per-atom input, 1 for fixed (fragment) atoms and 0
            otherwise (DiffLinker-style fragment conditioning; trained with ``train.fragment_prob``,
            used by ``moldiff sample --fix``).
        heads: attention heads of ``kind: eqattn`` (``hidden_nf`` must be a multiple; unused by ``egnn``).
        edge_nf: per-edge feature width of ``kind: eqattn`` (unused by ``egnn``).
        rbf_cutoff: last centre (Å) of ``kind: eqattn``'s radial basis of distances; 10 Å covers QM9,
            drug-sized molecules span up to ~20 Å (unused by ``egnn``).
    """

    kind: str = "egnn"
    hidden_nf: int = 256
    n_layers: int = 9
    attention: bool = True
    tanh: bool = True
    coords_range: float = 15.0
    norm_constant: float = 1.0
    normalization_factor: float = 1.0
    node_projection: bool = True
    precision: str = "fp32"
    self_condition: bool = False
    fragment_input: bool = False
    heads: int = 4
    edge_nf: int = 16
    rbf_cutoff: float = 10.0

    def __post_init__(self) -> None:
        _check_positive("model.hidden_nf", self.hidden_nf)
        _check_positive("model.heads", self.heads, integer=True)
        _check_positive("model.edge_nf", self.edge_nf, integer=True)
        _check_positive("model.rbf_cutoff", self.rbf_cutoff)
        _check_positive("model.n_layers", self.n_layers)
        _check_positive("model.coords_range", self.coords_range)
        _check_positive("model.normalization_factor", self.normalization_factor)
        if not isinstance(self.node_projection, bool):
            raise ValueError(f"model.node_projection must be true or false, got {self.node_projection!r}")
        _check_choice("model.precision", self.precision, PRECISIONS)
        if not isinstance(self.self_condition, bool):
            raise ValueError(f"model.self_condition must be true or false, got {self.self_condition!r}")
        if not isinstance(self.fragment_input, bool):
            raise ValueError(f"model.fragment_input must be true or false, got {self.fragment_input!r}")


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process (defaults: EDM's unconditional QM9 run).

    Attributes:
        parameterization: what the network predicts: ``"eps"`` (EDM), ``"x0"`` or ``"precond"``
            (Karras' preconditioned ``x0``: ``x0_pos = c_skip z_pos + c_out out_pos``; see
            :mod:`moldiff.diffusion.parameterization`).
        sigma_data: ``sigma_d`` of ``"precond"``, the standard deviation of the zero-CoM positions in
            the normalised space (QM9: 1.397 Angstrom, so 1.4); unused by ``"eps"`` / ``"x0"``.
        loss_weighting: ``"edm"`` (uniform noise error) or ``"snr_clamp"`` (``x0`` error weighted by
            ``clamp(SNR_t, *snr_clamp)``).
        snr_clamp: ``(lo, hi)`` of ``"snr_clamp"``; EQGAT-diff's ``(0.05, 1.5)`` by default.
        atom_types: ``"gaussian"`` (EDM: one-hot diffused with the positions) or ``"categorical"``
            (discrete labels with marginal transitions, cross-entropy; needs ``include_charges: false``).
        type_loss_weight: weight of the type cross-entropy against the position error (categorical).
        bonds: ``"none"`` (bonds are inferred from the coordinates after sampling) or
            ``"categorical"``: every atom pair carries a bond class (none / single / double / triple /
            aromatic) diffused with the molecule and predicted by an edge head (needs
            ``atom_types: categorical`` and a dataset with bonds).
        bond_loss_weight: weight of the per-pair mean bond cross-entropy (``bonds: categorical``).
        time_sampling: how training draws ``t``: ``"uniform"`` (EDM), ``"logit_normal"`` or ``"beta"``
            (see :mod:`moldiff.diffusion.time_sampling`; no loss re-weighting).
        time_sampling_params: the sampler's parameters: ``[]`` for ``uniform``; ``[loc, scale]`` for
            ``logit_normal`` (``[]``: ``[0, 1]``); ``[a, b]`` for ``beta`` (required).
    """

    timesteps: int = 1000
    noise_schedule: str = "polynomial_2"
    noise_precision: float = 1e-5
    loss_type: str = "l2"
    norm_values: tuple[float, float, float] = (1.0, 4.0, 10.0)
    include_charges: bool = True
    parameterization: str = "eps"
    sigma_data: float = 1.0
    loss_weighting: str = "edm"
    snr_clamp: tuple[float, float] = (0.05, 1.5)
    atom_types: str = "gaussian"
    type_loss_weight: float = 0.4
    bonds: str = "none"
    bond_loss_weight: float = 2.0
    time_sampling: str = "uniform"
    time_sampling_params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_positive("diffusion.timesteps", self.timesteps)
        object.__setattr__(self, "time_sampling_params",
                           _check_time_sampling(self.time_sampling, self.time_sampling_params))
        _check_choice("diffusion.loss_type", self.loss_type, ("l2", "vlb"))
        _check_choice("diffusion.parameterization", self.parameterization, ("eps", "x0", "precond"))
        _check_positive("diffusion.sigma_data", self.sigma_data)
        object.__setattr__(self, "sigma_data", float(self.sigma_data))
        _check_choice("diffusion.loss_weighting", self.loss_weighting, ("edm", "snr_clamp"))
        if len(self.snr_clamp) != 2 or not 0 <= float(self.snr_clamp[0]) < float(self.snr_clamp[1]):
            raise ValueError(f"diffusion.snr_clamp must be [lo, hi] with 0 <= lo < hi, got {self.snr_clamp!r}")
        object.__setattr__(self, "snr_clamp", tuple(float(v) for v in self.snr_clamp))
        _check_choice("diffusion.atom_types", self.atom_types, ("gaussian", "categorical"))
        _check_positive("diffusion.type_loss_weight", self.type_loss_weight)
        _check_choice("diffusion.bonds", self.bonds, ("none", "categorical"))
        _check_positive("diffusion.bond_loss_weight", self.bond_loss_weight)
        if self.bonds == "categorical" and self.atom_types != "categorical":
            raise ValueError("diffusion.bonds 'categorical' needs diffusion.atom_types: categorical")
        if self.atom_types == "categorical" and self.include_charges:
            raise ValueError("diffusion.atom_types 'categorical' needs diffusion.include_charges: false "
                             "(the atomic-number channel would duplicate the type)")
        if not _valid_schedule(self.noise_schedule):
            raise ValueError(
                f"diffusion.noise_schedule must be 'cosine' or 'polynomial_<p>' (p a number, e.g. polynomial_2), "
                f"got {self.noise_schedule!r}"
            )
        if len(self.norm_values) != 3:
            raise ValueError(f"diffusion.norm_values must have 3 entries, got {self.norm_values!r}")
        object.__setattr__(self, "norm_values", tuple(float(v) for v in self.norm_values))


#: ``train.align_noise`` values (the same names as ``moldiff.geometry.NOISE_ALIGNMENTS``; a test checks).
NOISE_ALIGNMENTS = ("none", "rotation", "permutation", "both")

#: ``train.lr_schedule`` values (``moldiff.training.trainer.lr_at`` implements them).
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and logging (defaults: EDM's ``get_optim`` and ``main_qm9.py``).

    ``ema_warmup``: the EMA decay ramps as ``min(ema_decay, (1 + step) / (10 + step))`` so that the
    averaged weights forget the random initialisation within the first steps (EDM: off).

    ``lr_schedule``: ``"constant"`` (EDM), or ``"linear"`` / ``"cosine"`` decay from ``lr`` to
    ``lr_min`` over the last ``lr_decay_steps`` steps of ``max_steps`` (all of them when ``None``):
    a warm-stable-decay "cool-down" when ``lr_decay_steps`` is a fraction of the run, or a branch
    started with ``--init`` from a long constant-rate run to export cooled-down weights.

    ``align_noise``: in training only, align the position noise to each molecule before
    ``z_t = alpha x + sigma eps`` is formed: ``"rotation"`` (Kabsch: the proper rotation of the noise
    closest to the molecule), ``"permutation"`` (Hungarian assignment of noise rows to atoms),
    ``"both"`` (rotation, then permutation) or ``"none"`` (EDM: independent noise). An ablation
    (SemlaFlow / EquiFM "equivariant OT"); see ``docs/configuration.md`` for the caveat.

    ``fragment_prob``: probability that a training molecule gets a fragment fixed (needs
    ``model.fragment_input``): a random connected group of ``k`` heavy atoms, ``k`` uniform in
    ``fragment_free = [lo, hi]`` (at most ``n_heavy - 1``), plus their hydrogens, is regenerated
    and every other atom is fixed (:func:`moldiff.training.fragments.fragment_mask`).
    """

    lr: float = 1e-4
    weight_decay: float = 1e-12
    batch_size: int = 64
    epochs: int = 3000
    max_steps: int | None = None
    max_minutes: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    clip_grad: bool = True
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    eval_every_steps: int = 2000
    n_eval_samples: int = 100
    eval_sample_steps: int = 100
    val_molecules: int | None = 2000
    log_every_steps: int = 50
    checkpoint_every_steps: int = 1000
    context_dropout: float = 0.0
    augment_rotations: bool = False
    compile: bool = False
    align_noise: str = "none"
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    lr_decay_steps: int | None = None
    fragment_prob: float = 0.0
    fragment_free: tuple[int, int] = (1, 4)

    def __post_init__(self) -> None:
        _check_positive("train.lr", self.lr)
        _check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_positive("train.lr_decay_steps", self.lr_decay_steps)
        if not 0.0 <= self.lr_min <= self.lr:
            raise ValueError(f"train.lr_min must be in [0, train.lr], got {self.lr_min!r}")
        if self.lr_schedule != "constant" and self.max_steps is None:
            raise ValueError(f"train.lr_schedule {self.lr_schedule!r} decays towards train.max_steps, which is not set")
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.epochs", self.epochs)
        _check_positive("train.max_steps", self.max_steps)
        _check_positive("train.max_minutes", self.max_minutes)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.context_dropout < 1.0:
            raise ValueError(f"train.context_dropout must be in [0, 1), got {self.context_dropout!r}")
        _check_choice("train.device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        _check_choice("train.align_noise", self.align_noise, NOISE_ALIGNMENTS)
        if isinstance(self.fragment_prob, bool) or not isinstance(self.fragment_prob, (int, float)) \
                or not 0.0 <= self.fragment_prob <= 1.0:
            raise ValueError(f"train.fragment_prob must be a number in [0, 1], got {self.fragment_prob!r}")
        free = tuple(self.fragment_free) if isinstance(self.fragment_free, (list, tuple)) else ()
        if len(free) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in free) \
                or not 1 <= free[0] <= free[1]:
            raise ValueError("train.fragment_free must be integers [lo, hi] with 1 <= lo <= hi, "
                             f"got {self.fragment_free!r}")
        object.__setattr__(self, "fragment_free", free)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a training run needs; saved inside every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.fragment_prob > 0 and not self.model.fragment_input:
            raise ValueError("train.fragment_prob > 0 needs model.fragment_input: true (the network must see "
                             "which atoms are fixed)")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (tuples become lists), suitable for YAML/JSON."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ExperimentConfig:
        """Build from a (possibly partial) nested dict; unknown keys raise ``ValueError``."""
        d = dict(d or {})
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; allowed: {sorted(sections)}")
        kinds = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}
        built = {}
        for name, kind in kinds.items():
            sub = d.get(name) or {}
            if not isinstance(sub, dict):
                raise ValueError(f"config section {name!r} must be a mapping, got {type(sub).__name__}")
            allowed = {f.name for f in fields(kind)}
            bad = set(sub) - allowed
            if bad:
                raise ValueError(f"unknown key(s) {sorted(bad)} in section {name!r}; allowed: {sorted(allowed)}")
            built[name] = kind(**_numbers_from_strings(name, kind, sub))
        return cls(**built)

    def override(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """Return a copy with ``section={key: value}`` overrides applied (unknown keys rejected)."""
        d = self.to_dict()
        for name, upd in sections.items():
            if name not in d:
                raise ValueError(f"unknown config section {name!r}")
            d[name].update(upd)
        return ExperimentConfig.from_dict(d)

    def save_yaml(self, path: str | Path) -> None:
        """Write the full config as YAML (as JSON, which is YAML too, where PyYAML is absent)."""
        try:  # imported here: training must run where PyYAML is missing (the GPU image has none)
            import yaml
        except ImportError:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        Path(path).write_text(text)

    @classmethod
    def load_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Load a YAML overlay on the defaults; raises ``ValueError`` on unknown keys or bad YAML."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {p} is not valid YAML: {exc}") from None
        if d is not None and not isinstance(d, dict):
            raise ValueError(f"config file {p} must hold a mapping at top level")
        return cls.from_dict(d)


def _numbers_from_strings(section: str, kind: type, values: dict[str, Any]) -> dict[str, Any]:
    """Read strings given for float fields as numbers: PyYAML (YAML 1.1) loads ``1e-4`` as a string."""
    out = dict(values)
    for f in fields(kind):
        value = out.get(f.name)
        if isinstance(value, str) and f.type in ("float", "float | None"):
            try:
                out[f.name] = float(value)
            except ValueError:
                raise ValueError(f"{section}.{f.name} must be a number, got {value!r}") from None
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


__all__ = ["DataConfig", "ModelConfig", "DiffusionConfig", "TrainConfig", "ExperimentConfig"]
