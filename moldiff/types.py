"""Batch containers and the Denoiser protocol shared by ``nn``, ``diffusion`` and ``sampling``.

Molecules are stored sparsely, PyG style: atoms of all molecules are concatenated and ``batch``
maps every atom to its molecule, so no molecule is padded to the largest one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(init=False)
class MolBatch:
    """A batch of molecules.

    Attributes:
        pos: ``[N, 3]`` positions in Å.
        one_hot: ``[N, K]`` one-hot atom types over the model's element vocabulary.
        atomic_numbers: ``[N, 1]`` atomic numbers, float (``[N, 0]`` when the model has no such
            channel). EDM calls this channel "charges" (its ``include_charges``); :attr:`charges` and
            the ``charges=`` keyword are kept as aliases of it. Formal charges are :attr:`formal_charge`.
        batch: ``[N]`` long, molecule index of each atom (sorted, 0..B-1).
        num_graphs: ``B``.
        context: ``[B, C]`` conditioning properties (already normalised) or ``None``.
        bond_index: ``[2, E]`` long, each bond once as global atom indices ``i < j``, or ``None``
            (datasets without bonds).
        bond_type: ``[E]`` long bond-type codes (1 single, 2 double, 3 triple, 4 aromatic; see
            ``moldiff.constants.BOND_ORDERS``), or ``None``.
        formal_charge: ``[N]`` long formal charges, or ``None``.
    """

    pos: torch.Tensor
    one_hot: torch.Tensor
    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    context: torch.Tensor | None = None
    bond_index: torch.Tensor | None = None
    bond_type: torch.Tensor | None = None
    formal_charge: torch.Tensor | None = None

    def __init__(
        self,
        pos: torch.Tensor,
        one_hot: torch.Tensor,
        atomic_numbers: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        num_graphs: int | None = None,
        context: torch.Tensor | None = None,
        bond_index: torch.Tensor | None = None,
        bond_type: torch.Tensor | None = None,
        formal_charge: torch.Tensor | None = None,
        *,
        charges: torch.Tensor | None = None,
    ) -> None:
        if charges is not None:
            if atomic_numbers is not None:
                raise TypeError("MolBatch: pass atomic_numbers or its EDM name charges, not both")
            atomic_numbers = charges
        if atomic_numbers is None or batch is None or num_graphs is None:
            raise TypeError("MolBatch needs pos, one_hot, atomic_numbers, batch and num_graphs")
        self.pos, self.one_hot, self.atomic_numbers, self.batch = pos, one_hot, atomic_numbers, batch
        self.num_graphs, self.context = num_graphs, context
        self.bond_index, self.bond_type, self.formal_charge = bond_index, bond_type, formal_charge

    @property
    def charges(self) -> torch.Tensor:
        """EDM's name of :attr:`atomic_numbers` (the channel holds atomic numbers, not formal charges)."""
        return self.atomic_numbers

    @charges.setter
    def charges(self, value: torch.Tensor) -> None:
        self.atomic_numbers = value

    def to(self, device: torch.device | str) -> MolBatch:
        """Return a copy on ``device``."""
        ctx = None if self.context is None else self.context.to(device)
        return replace(
            self,
            pos=self.pos.to(device),
            one_hot=self.one_hot.to(device),
            atomic_numbers=self.atomic_numbers.to(device),
            batch=self.batch.to(device),
            context=ctx,
            **{k: getattr(self, k).to(device) for k in ("bond_index", "bond_type", "formal_charge")
               if getattr(self, k) is not None},
        )

    @property
    def num_atoms(self) -> torch.Tensor:
        """``[B]`` atom count of every molecule."""
        return torch.bincount(self.batch, minlength=self.num_graphs)


#: The one network-output type: ``(out_pos [N, 3], out_h [N, F])`` for one batch. A :class:`Denoiser`
#: returns it in its parameterization's target (noise for EDM's ``eps``; see
#: ``moldiff.diffusion.parameterization``); an :data:`EpsFn` returns it as noise.
NetworkOutput = tuple[torch.Tensor, torch.Tensor]

#: A network bound to one batch (its ``batch`` vector and context), as noise:
#: ``(z_pos [N, 3], z_h [N, F], t [B]) -> (eps_pos, eps_h)``; the samplers' override hook (e.g.
#: classifier-free guidance, ``moldiff.conditioning.guided_eps_fn``).
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], NetworkOutput]


@runtime_checkable
class Denoiser(Protocol):
    """A network predicting a noisy molecule's noise (or, with another parameterization, its clean version).

    ``(pos, h, t, batch, context) -> (out_pos, out_h)`` (:data:`NetworkOutput`) with ``pos [N, 3]``,
    ``h [N, F]``, ``t [B]`` (normalised time in [0, 1]), ``batch [N]``, ``context [B, C] | None``;
    ``out_pos [N, 3]`` has zero mean per molecule and ``out_h [N, F]``. For EDM's ``eps``
    parameterization the output is ``(eps_pos, eps_h)``.
    """

    def __call__(
        self,
        pos: torch.Tensor,
        h: torch.Tensor,
        t: torch.Tensor,
        batch: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> NetworkOutput:
        """Predict ``(out_pos, out_h)`` (``(eps_pos, eps_h)`` for ``eps`` models)."""
        ...


class ContextNormalizer:
    """``c_norm = (c − mean) / MAD`` per property, with statistics stored in the checkpoint.

    The one property normaliser: the data loader normalises training contexts with it, sampling
    (``moldiff.conditioning``, which re-exports it) normalises targets, and the property classifiers
    invert their predictions with it. ``moldiff.data.statistics.property_mean_mad`` computes the
    ``(mean, MAD)`` pairs.

    Args:
        norms: ``{name: (mean, MAD)}`` (e.g. ``DatasetStats.property_norms``).
        keys: property order of the context columns.

    >>> n = ContextNormalizer({"alpha": (75.0, 6.0)}, ["alpha"])
    >>> n.normalize(torch.tensor([[81.0]])).tolist(), n.denormalize(torch.tensor([[1.0]])).tolist()
    ([[1.0]], [[81.0]])
    """

    def __init__(self, norms: Mapping[str, Sequence[float]], keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        missing = [k for k in self.keys if k not in norms]
        if missing:
            raise ValueError(f"no (mean, MAD) stored for {missing}")
        self.mean = torch.tensor([float(norms[k][0]) for k in self.keys], dtype=torch.float64)
        self.mad = torch.tensor([float(norms[k][1]) for k in self.keys], dtype=torch.float64)
        if (self.mad <= 0).any():
            raise ValueError("property MAD must be positive")

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` raw values -> ``[B, C]`` normalised (float64)."""
        return (values.double() - self.mean) / self.mad

    def denormalize(self, context: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` normalised -> ``[B, C]`` raw values (float64)."""
        return context.double() * self.mad + self.mean

    def stack(self, values: Mapping[str, torch.Tensor | float], num: int) -> torch.Tensor:
        """Raw ``{name: [B] or scalar}`` -> ``[num, C]`` normalised context in ``keys`` order."""
        cols = [torch.as_tensor(values[k], dtype=torch.float64).expand(num) for k in self.keys]
        return self.normalize(torch.stack(cols, dim=1))


#: Keys of :class:`DatasetStats` in a checkpoint's ``stats`` dict (anything else is kept in ``extra``).
_STATS_KEYS = ("dataset", "elements", "n_atoms_hist", "max_n_atoms", "context_nf", "conditioning",
               "property_norms", "property_distribution")


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of a model's training data, stored in every checkpoint so that sampling needs no dataset.

    Checkpoints keep the plain dict (:meth:`to_dict`; read back with :meth:`from_dict`), so files
    load with ``weights_only=True`` and files written before this class load unchanged.

    Attributes:
        elements: element vocabulary in one-hot order.
        n_atoms_hist: ``{N: count}`` of the training molecules, ``p(N)``.
        max_n_atoms: largest training molecule (``None`` in files that did not record it).
        context_nf: number of conditioning properties.
        conditioning: their names, in context order.
        dataset: the dataset's name (``""`` when unrecorded).
        property_norms: ``{name: (mean, MAD)}`` normalising each property (EDM: validation split).
        property_distribution: ``p(c | N)`` as stored (``PropertyDistribution.to_dict()``), or ``None``.
        extra: any other keys of the stored dict, kept for the round trip.
    """

    elements: tuple[str, ...]
    n_atoms_hist: Mapping[int, float]
    max_n_atoms: int | None = None
    context_nf: int = 0
    conditioning: tuple[str, ...] = ()
    dataset: str = ""
    property_norms: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    property_distribution: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_atoms(self) -> int:
        """``max_n_atoms``, or the largest ``N`` of the histogram when it was not recorded."""
        return int(self.max_n_atoms) if self.max_n_atoms is not None else max(self.n_atoms_hist)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | DatasetStats) -> DatasetStats:
        """Read the ``stats`` dict of a checkpoint (``DatasetStats`` passes through)."""
        if isinstance(d, DatasetStats):
            return d
        if not isinstance(d, Mapping) or "elements" not in d or "n_atoms_hist" not in d:
            raise KeyError("dataset statistics need 'elements' and 'n_atoms_hist'")
        norms = d.get("property_norms") or {}
        return cls(
            elements=tuple(str(e) for e in d["elements"]),
            n_atoms_hist={int(k): v for k, v in d["n_atoms_hist"].items()},
            max_n_atoms=None if d.get("max_n_atoms") is None else int(d["max_n_atoms"]),
            context_nf=int(d.get("context_nf", 0)),
            conditioning=tuple(d.get("conditioning", ())),
            dataset=str(d.get("dataset", "")),
            property_norms={str(k): (float(v[0]), float(v[1])) for k, v in norms.items()},
            property_distribution=d.get("property_distribution"),
            extra={k: v for k, v in d.items() if k not in _STATS_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The plain dict checkpoints store (lists, not tuples; optional keys only when set)."""
        out: dict[str, Any] = {"dataset": self.dataset, "elements": list(self.elements),
                               "n_atoms_hist": dict(self.n_atoms_hist)}
        if self.max_n_atoms is not None:
            out["max_n_atoms"] = int(self.max_n_atoms)
        out["context_nf"] = int(self.context_nf)
        out["conditioning"] = list(self.conditioning)
        if self.property_norms:
            out["property_norms"] = {k: [float(m), float(s)] for k, (m, s) in self.property_norms.items()}
        if self.property_distribution is not None:
            out["property_distribution"] = self.property_distribution
        out.update(self.extra)
        return out
