"""High-level API: build a model from a config, load checkpoints and shipped models, sample molecules.

>>> import moldiff
>>> model = moldiff.load_model("qm9")            # doctest: +SKIP
>>> mols = model.sample(10, steps=100, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moldiff.checkpoint import load_checkpoint, load_state
from moldiff.config import ExperimentConfig
from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.models import build_model
from moldiff.sampling.batching import iter_batches
from moldiff.sampling.config import SamplingConfig
from moldiff.sampling.priors import NodeCountDistribution
from moldiff.sampling.sampler import SAMPLERS, Sampler
from moldiff.types import DatasetStats

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
#: The public name of :func:`moldiff.models.build_model` (config -> untrained model), kept for scripts.
build_process = build_model


def shipped_models() -> list[str]:
    """Names of the checkpoints shipped inside the package."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


@dataclass
class MolDiff:
    """A trained model ready to sample: EMA weights, vocabulary, ``p(N)`` and dataset statistics.

    Attributes:
        process: the diffusion process holding the (EMA) denoiser.
        config: the training config.
        stats: dataset statistics stored in the checkpoint (:class:`~moldiff.types.DatasetStats`;
            a checkpoint's plain ``stats`` dict is converted on construction).
        name: model name or checkpoint path.
    """

    process: EquivariantDiffusion
    config: ExperimentConfig
    stats: DatasetStats
    name: str = "model"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = DatasetStats.from_dict(self.stats)

    @property
    def elements(self) -> list[str]:
        """Element vocabulary (one-hot order)."""
        return list(self.stats.elements)

    @property
    def node_distribution(self) -> NodeCountDistribution:
        """``p(N)`` of the training data."""
        return NodeCountDistribution(dict(self.stats.n_atoms_hist))

    @property
    def max_atoms(self) -> int:
        """Largest molecule the model was trained on."""
        return self.stats.max_atoms

    @property
    def conditioning(self) -> tuple[str, ...]:
        """Properties the model is conditioned on (empty: unconditional)."""
        return tuple(self.config.data.conditioning)

    @property
    def default_sampling(self) -> tuple[str, int | None]:
        """``(sampler, steps)`` recommended for this model (``steps=None``: all ``T``).

        ``info["sampling"]`` when the checkpoint records one (chosen from a measured steps-vs-quality
        table, see ``benchmarks/README.md``), else EDM's ancestral sampler over all ``T`` steps.
        """
        rec = self.info.get("sampling") or {}
        method, steps = rec.get("method", "ancestral"), rec.get("steps")
        if method not in SAMPLERS or (steps is not None and not 1 <= int(steps) <= self.process.timesteps):
            return "ancestral", None
        return method, None if steps is None else int(steps)

    @property
    def default_spacing(self) -> str:
        """Step spacing recommended for this model (``info["sampling"]["spacing"]``), else ``uniform``."""
        from moldiff.sampling.config import SPACINGS

        spacing = (self.info.get("sampling") or {}).get("spacing", "uniform")
        return spacing if spacing in SPACINGS else "uniform"

    @property
    def default_noise(self) -> tuple[float, tuple[float, float] | None, str]:
        """``(churn, churn_range, final)`` recommended for this model (``info["sampling"]``).

        ``(0.0, None, "sample")`` (no noise injection, EDM's last step) when the checkpoint records
        none or an invalid combination.
        """
        rec = self.info.get("sampling") or {}
        churn, churn_range, final = rec.get("churn", 0.0), rec.get("churn_range"), rec.get("final", "sample")
        try:
            cfg = SamplingConfig(churn=churn, churn_range=churn_range, final=final)
        except (TypeError, ValueError):
            return 0.0, None, "sample"
        return cfg.churn, cfg.churn_range, cfg.final

    def recommended_sampling(self, *, method: str | None = None, steps: int | None = None,
                             spacing: str | None = None, churn: float | None = None,
                             churn_range: tuple[float, float] | None = None, final: str | None = None,
                             **fields: Any) -> SamplingConfig:
        """The model's recommended :class:`SamplingConfig`, each setting overridden where given.

        ``method``, ``steps``, ``spacing``, ``final``: ``None`` keeps the recommendation. ``churn``
        replaces the recommended noise injection together with its window (``churn_range`` goes
        with it); ``churn_range`` alone moves the recommended window. ``fields``: the other
        ``SamplingConfig`` fields (seed, eta, batch budgets). Raises ``ValueError`` as the config does.
        """
        rec_method, rec_steps = self.default_sampling
        rec_churn, rec_range, rec_final = self.default_noise
        if churn is not None:
            rec_churn, rec_range = churn, churn_range
        elif churn_range is not None:
            rec_range = churn_range
        return SamplingConfig(method=method or rec_method, steps=steps or rec_steps,
                              spacing=spacing or self.default_spacing, churn=rec_churn, churn_range=rec_range,
                              final=final or rec_final, **fields)

    def to(self, device: str | torch.device) -> MolDiff:
        """Move the model to ``device``."""
        self.process.to(device)
        return self

    # ------------------------------------------------------------------ sampling
    def iter_samples(
        self, num: int, steps: int | None = None, seed: int | None = 0, num_atoms: int | list[int] | None = None,
        method: str = "ancestral", batch_size: int | None = None, max_atoms_per_batch: int | None = None,
        progress: bool = False, context: torch.Tensor | None = None, eps_fn: Any = None,
        target: dict[str, float] | None = None, guidance: float | None = None, eta: float = 0.0,
        device: str | torch.device | None = None, rank: int = 0, world_size: int = 1,
        allow_extrapolation: bool = False, *, config: SamplingConfig | None = None, with_bonds: bool = False,
    ) -> Iterator[tuple[int, list[tuple]]]:
        """Sample ``num`` molecules batch by batch: an iterator of ``(k, molecules)`` for batch ``k``, in order.

        Arguments are checked (``ValueError``) when this is called, before any sampling.

        The arguments are those of :meth:`sample_raw`, plus the sharding pair ``rank`` /
        ``world_size``: batch ``k`` is sampled by the process with ``rank == k % world_size``, and
        every process draws the same sizes and batch seeds, so the union over ranks is exactly the
        single-process result (:func:`moldiff.sampling.sharding.gather_in_order` reassembles it).
        Batches are packed by atom count (``max_atoms_per_batch``, automatic by default: see
        :func:`moldiff.sampling.sampler.auto_batch_budget`), at most ``batch_size`` molecules each.
        ``allow_extrapolation`` accepts targets outside the training range (refused otherwise).
        ``progress`` shows one bar over all denoising steps of this rank's batches.
        ``with_bonds`` yields ``(symbols, pos, bonds)`` triples instead of pairs: ``bonds`` is the
        model's own ``[(i, j, code), ...]`` (codes of ``moldiff.constants.BOND_ORDERS``) for a model
        with a bond channel (:attr:`has_bonds`), ``None`` for the others.

        ``config`` gives method, steps, eta, seed and batch budgets as one
        :class:`~moldiff.sampling.config.SamplingConfig` (the CLI's way in); without it one is built
        from ``method``, ``steps``, ``eta``, ``seed``, ``batch_size`` and ``max_atoms_per_batch``.
        """
        if num < 1:
            raise ValueError(f"number of molecules must be >= 1, got {num}")
        if config is None:
            config = SamplingConfig(method=method, steps=steps, eta=eta, seed=seed, batch_size=batch_size,
                                    max_atoms_per_batch=max_atoms_per_batch)
        elif (steps, seed, method, eta, batch_size, max_atoms_per_batch) != (None, 0, "ancestral", 0.0, None, None):
            raise ValueError("pass either config=SamplingConfig(...) or method/steps/eta/seed/batch sizes, not both")
        config.num_steps(self.process.timesteps)  # steps <= T, checked before any sampling
        seed = config.seed
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        cond = None
        if self.conditioning and context is None:
            from moldiff.conditioning import conditional_inputs

            cond = conditional_inputs(self, num, num_atoms, target, guidance, gen,
                                      allow_extrapolation=allow_extrapolation)
            num_atoms, context = cond.num_atoms, cond.context
        elif target or guidance is not None:
            raise ValueError(f"model {self.name!r} is unconditional: target/guidance need a conditional model")
        if num_atoms is None:
            counts = self.node_distribution.sample(num, generator=gen)
        else:
            counts = torch.as_tensor([num_atoms] * num if isinstance(num_atoms, int) else num_atoms)
            if counts.numel() != num or int(counts.min()) < 1 or int(counts.max()) > self.max_atoms:
                raise ValueError(f"number of atoms must be between 1 and the model's limit {self.max_atoms}")
        eps_fn_for = None
        if cond is not None and cond.guidance:
            def eps_fn_for(sl: slice) -> Any:
                return cond.eps_fn(self.process, counts[sl], context[sl])

        self.process.eval()
        elements = self.elements
        batches = iter_batches(Sampler(self.process), counts, config, context=context, eps_fn=eps_fn,
                               eps_fn_for=eps_fn_for, rank=rank, world_size=world_size, progress=progress,
                               device=device)
        if with_bonds:
            return ((k, [([elements[i] for i in t.tolist()], p.double().numpy(), b)
                         for (t, p), b in zip(out.split(), _bonds_or_none(out), strict=True)])
                    for k, _, out in batches)
        return ((k, [([elements[i] for i in t.tolist()], p.double().numpy()) for t, p in out.split()])
                for k, _, out in batches)

    def sample_raw(self, num: int, steps: int | None = None, seed: int | None = 0,
                   **kwargs: Any) -> list[tuple[list[str], np.ndarray]]:
        """Sample ``num`` molecules as ``(symbols, pos [n, 3])`` pairs (in order, reproducible).

        Conditional models: ``target={"alpha": 80.0}`` (raw units, any subset of the model's
        properties) fixes those properties; ``N ~ p(N | target)`` unless ``num_atoms`` is given, and
        properties left out are drawn from ``p(c | N)`` (EDM). With no target, ``(N, c)`` follows the
        training joint. ``guidance=w`` applies classifier-free guidance (needs a model trained with
        ``context_dropout``); ``w = 0`` equals plain conditional sampling. See ``docs/conditional.md``.

        Keyword arguments (all optional): ``num_atoms`` (int or list), ``method`` (one of
        :data:`~moldiff.sampling.sampler.SAMPLERS`), ``eta`` (DDIM), ``batch_size`` (molecules per
        batch), ``max_atoms_per_batch``, ``progress``, ``context``, ``eps_fn``, ``target``,
        ``guidance``, ``device``; see :meth:`iter_samples`.
        """
        return [m for _, batch in self.iter_samples(num, steps=steps, seed=seed, **kwargs) for m in batch]

    def sample(self, num: int, steps: int | None = None, seed: int | None = 0, add_hydrogens: bool | None = None,
               hydrogen_placement: str = "mmff", **kwargs: Any) -> list:
        """Sample ``num`` molecules as RDKit ``Mol`` objects with 3D conformers.

        Bonds are the model's own for a model with a bond channel (:attr:`has_bonds`), else inferred
        with EDM's distance tables. ``add_hydrogens`` (default: :attr:`adds_hydrogens`) completes a
        heavy-atom model's molecules with RDKit's hydrogens, placed as ``hydrogen_placement`` says
        (:func:`to_rdkit`).
        """
        add_h = self.adds_hydrogens if add_hydrogens is None else bool(add_hydrogens)
        samples = self.iter_samples(num, steps=steps, seed=seed, with_bonds=True, **kwargs)
        return [to_rdkit(*m, add_hydrogens=add_h, hydrogen_placement=hydrogen_placement)
                for _, batch in samples for m in batch]

    @property
    def has_bonds(self) -> bool:
        """Whether the model generates bonds itself (a categorical bond channel)."""
        return bool(getattr(self.process, "has_bonds", False))

    @property
    def adds_hydrogens(self) -> bool:
        """Whether written molecules get hydrogens from RDKit: a heavy-atom model (``data.remove_h``) with bonds."""
        return self.has_bonds and bool(self.config.data.remove_h)


def _bonds_or_none(out: Any) -> list:
    return out.split_bonds() if out.has_bonds else [None] * out.num_graphs


#: How added hydrogens are placed: ``"mmff"`` (RDKit's positions, then an MMFF94 minimisation of the
#: hydrogens alone, heavy atoms fixed: :func:`moldiff.relax.optimize_hydrogens`) or ``"rdkit"``
#: (``Chem.AddHs(addCoords=True)`` only).
HYDROGEN_PLACEMENTS: tuple[str, ...] = ("mmff", "rdkit")


def to_rdkit(symbols: list[str], pos: np.ndarray, bonds: list[tuple[int, int, int]] | None = None,
             add_hydrogens: bool = False, hydrogen_placement: str = "mmff") -> Any:
    """RDKit ``Mol`` with a 3D conformer.

    With ``bonds`` (``(i, j, code)``, a bond-channel model's own) the molecule has exactly those bonds
    (:func:`moldiff.io.bonded_mol`, sanitised when RDKit accepts it); without, bonds are inferred with
    EDM's distance tables (unsanitised). ``add_hydrogens`` (with ``bonds``): add the implicit
    hydrogens of a sanitised molecule as atoms, placed by RDKit (``Chem.AddHs(addCoords=True)``)
    and, with ``hydrogen_placement="mmff"`` (default), moved to their MMFF94 minimum against the
    fixed heavy atoms (see :data:`HYDROGEN_PLACEMENTS`); the heavy atoms keep the model's
    coordinates exactly. A molecule RDKit cannot sanitise is returned without hydrogens.
    """
    if hydrogen_placement not in HYDROGEN_PLACEMENTS:
        raise ValueError(f"hydrogen_placement must be one of {list(HYDROGEN_PLACEMENTS)}, got {hydrogen_placement!r}")
    if bonds is not None:
        from moldiff.io import bonded_mol

        mol = bonded_mol(symbols, pos, bonds)
        if add_hydrogens:
            from rdkit import Chem
            from rdkit.rdBase import BlockLogs

            with BlockLogs():
                try:
                    Chem.SanitizeMol(Chem.Mol(mol))
                except Exception:  # noqa: BLE001 - invalid valences: no hydrogens to add
                    return mol
            mol = Chem.AddHs(mol, addCoords=True)
            if hydrogen_placement == "mmff":
                from moldiff.relax import optimize_hydrogens

                with BlockLogs():
                    optimize_hydrogens(mol)
        return mol
    from moldiff.evaluation.build import add_conformer, build_edm_mol
    from moldiff.evaluation.stability import bond_order_matrix

    mol = build_edm_mol(symbols, bond_order_matrix(symbols, pos)).GetMol()
    mol.UpdatePropertyCache(strict=False)
    return add_conformer(mol, pos)


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> MolDiff:
    """Load a :class:`MolDiff` from a checkpoint file written by the trainer."""
    payload = load_checkpoint(path)
    try:
        config = ExperimentConfig.from_dict(payload["config"])
        stats = DatasetStats.from_dict(payload["stats"])
        process = build_model(config, len(stats.elements), stats.context_nf)
    except (KeyError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"checkpoint {path} does not match this moldiff version: {msg}") from None
    load_state(process, payload["ema" if use_ema else "model"], path)
    process.to(device).eval()
    info = payload.get("info", {})
    return MolDiff(process, config, stats, name=str(path), info=info if isinstance(info, dict) else {})


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """Path of a shipped model name (``moldiff.shipped_models()``) or of a checkpoint file.

    Raises ``ValueError`` naming the shipped models when ``name_or_path`` is neither.
    """
    p = Path(name_or_path)
    if p.suffix == ".pt" or p.exists():
        return p
    shipped = PRETRAINED_DIR / f"{name_or_path}.pt"
    if not shipped.is_file():
        raise ValueError(f"unknown model {str(name_or_path)!r}; shipped models: {', '.join(shipped_models())} "
                         "(or give a .pt path)")
    return shipped


def load_model(name_or_path: str = "qm9", device: str | torch.device = "cpu") -> MolDiff:
    """Load a shipped model by name (``moldiff.shipped_models()``) or any checkpoint path.

    Checkpoints are read with ``torch.load(weights_only=True)``: a file holding anything but plain
    data and tensors is refused (``ValueError``) without running any of it.
    """
    path = resolve_checkpoint(name_or_path)
    model = from_checkpoint(path, device)
    if path.parent == PRETRAINED_DIR and not Path(name_or_path).exists():
        model.name = str(name_or_path)
    return model
