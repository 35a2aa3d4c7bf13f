"""EGNN denoiser implementing the :class:`moldiff.types.Denoiser` protocol (EDM ``EGNN_dynamics_QM9``)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from moldiff.geometry import molecule_pairs, pair_lookup, remove_mean
from moldiff.nn.attention import EquivariantAttention
from moldiff.nn.egnn import EGNN, no_autocast

#: Precision modes of :class:`EGNNDenoiser` -> autocast dtype (``None``: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: Backbones of :class:`EGNNDenoiser`; the name is also the attribute (``state_dict`` prefix) of the network.
BACKBONES = ("egnn", "eqattn")


def fully_connected_edges(batch: torch.Tensor) -> torch.Tensor:
    """All ordered pairs ``(i, j), i != j`` of atoms in the same molecule, built without Python loops.

    Args:
        batch: ``[N]`` sorted molecule index of every atom.

    Returns:
        ``[2, E]`` long tensor with ``E = sum_b n_b (n_b - 1)``.

    >>> fully_connected_edges(torch.tensor([0, 0, 1, 1, 1])).shape
    torch.Size([2, 8])
    """
    n = batch.shape[0]
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    counts = torch.bincount(batch)
    ptr = torch.cumsum(counts, 0) - counts  # first atom of every molecule
    deg = counts[batch]  # atoms in my molecule, self included
    row = torch.repeat_interleave(torch.arange(n, device=batch.device), deg)
    start = torch.cumsum(deg, 0) - deg
    offset = torch.arange(row.shape[0], device=batch.device) - torch.repeat_interleave(start, deg)
    col = ptr[batch[row]] + offset
    keep = row != col
    return torch.stack([row[keep], col[keep]])


class EGNNDenoiser(nn.Module):
    """Predicts ``(eps_pos, eps_h)`` from a noisy molecule, the time and an optional context.

    The network input per atom is ``[h, t, context]`` (time and the per-molecule context are
    broadcast to atoms, as in EDM; then the optional self-conditioning features and fragment flag);
    the extra channels are sliced off the output.
    ``eps_pos = pos_out - pos_in`` re-centred per molecule, so it lies in the zero-CoM subspace.

    Mixed precision (``precision="bf16"``): the EGNN runs under ``torch.autocast(device_type=<pos's
    device>, dtype=torch.bfloat16)``, so the invariant MLPs (embeddings, edge, attention, node and
    coordinate-weight MLPs) compute in bfloat16, while everything touching positions stays in the
    input dtype: pairwise differences, squared distances (computed before they enter an MLP), the
    coordinate update and the centre-of-mass removal (:func:`moldiff.nn.egnn.no_autocast`).
    ``eps_pos`` and ``eps_h`` come back in the dtype of ``pos`` and ``h`` (float32). Parameters and
    the ``state_dict`` are the same in every mode; ``precision`` may be changed on a built model.
    Works on CPU and CUDA; float64 inputs are left in float64 by autocast.

    Args:
        in_node_nf: width of ``h`` (one-hot types + optional charge channel).
        context_nf: width of the context (0: unconditional).
        hidden_nf, n_layers, attention, tanh, coords_range, norm_constant, normalization_factor,
            node_projection: see :class:`moldiff.nn.egnn.EGNN`.
        precision: ``"fp32"`` (no autocast; default) or ``"bf16"`` (see above).
        self_condition: also read a previous clean-molecule estimate ``self_cond = (x0_pos, x0_h)``
            (Chen et al., 2023; as in SemlaFlow / FlowMol): its features are extra node inputs and
            its squared interatomic distances an extra edge feature, so the network stays
            E(3)-equivariant. ``None`` (no estimate yet) is read as zeros.
        bond_classes: ``K_b > 0`` adds a bond channel (EQGAT-diff / MiDi style): ``forward`` then
            takes ``bonds [P, K_b]``, the (noisy) one-hot bond class of every atom pair of
            :func:`moldiff.geometry.molecule_pairs` (class 0: no bond). The classes are an extra
            feature of both directed edges of a pair in every layer, and an edge head reads
            ``[h_i + h_j, |x_i - x_j|^2, bonds_ij]`` (final features and positions; symmetric in
            ``i, j`` and E(3)-invariant) into ``[P, K_b]`` clean-bond logits, returned third.
        fragment_input: also read ``fixed [N]``, 1.0 for atoms held fixed (a fragment given clean,
            DiffLinker-style) and 0.0 otherwise; ``None`` is read as all zeros (unconditional). The
            flag is the last node input column (after the self-conditioning features), so a network
            grown from one without it by zero-padding (:func:`moldiff.checkpoint.grow_state_dict`)
            computes exactly the source network; it is sliced off the output like ``t``.
        backbone: ``"egnn"`` (:class:`moldiff.nn.egnn.EGNN`, stored as ``self.egnn``) or ``"eqattn"``
            (:class:`moldiff.nn.attention.EquivariantAttention`, stored as ``self.eqattn``; it ignores
            ``attention`` and ``node_projection``). Everything else (inputs, self-conditioning, bonds,
            fragment flag, precision, outputs) is shared.
        heads, edge_nf: attention heads and per-edge feature width of the ``"eqattn"`` backbone.
        rbf_cutoff: last radial-basis centre of the ``"eqattn"`` backbone (Å).

    Shapes:
        pos ``[N, 3]``, h ``[N, in_node_nf]``, t ``[B]`` or ``[B, 1]``, batch ``[N]``,
        context ``[B, context_nf]`` -> eps_pos ``[N, 3]``, eps_h ``[N, in_node_nf]``.
    """

    def __init__(
        self, in_node_nf: int, context_nf: int = 0, hidden_nf: int = 256, n_layers: int = 9,
        attention: bool = True, tanh: bool = True, coords_range: float = 15.0, norm_constant: float = 1.0,
        normalization_factor: float = 1.0, node_projection: bool = True, precision: str = "fp32",
        self_condition: bool = False, bond_classes: int = 0, fragment_input: bool = False,
        backbone: str = "egnn", heads: int = 4, edge_nf: int = 16, rbf_cutoff: float = 10.0,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
        self.backbone = backbone
        self.in_node_nf = in_node_nf
        self.context_nf = context_nf
        self.precision = precision
        self.self_condition = bool(self_condition)
        self.bond_classes = int(bond_classes)
        self.fragment_input = bool(fragment_input)
        in_nf = in_node_nf + 1 + context_nf + (in_node_nf if self_condition else 0) + int(self.fragment_input)
        extra_edge_nf = (1 if self_condition else 0) + self.bond_classes
        if backbone == "egnn":
            self.egnn = EGNN(
                in_nf, hidden_nf, n_layers, attention, tanh, coords_range, norm_constant, normalization_factor,
                node_projection, extra_edge_nf=extra_edge_nf,
            )
        else:
            self.eqattn = EquivariantAttention(
                in_nf, hidden_nf, n_layers, heads, edge_nf, tanh, coords_range, norm_constant,
                normalization_factor, extra_edge_nf=extra_edge_nf, rbf_cutoff=rbf_cutoff,
            )
        self.bond_head = None
        if self.bond_classes:
            self.bond_head = nn.Sequential(
                nn.Linear(hidden_nf + 1 + self.bond_classes, hidden_nf), nn.SiLU(),
                nn.Linear(hidden_nf, self.bond_classes),
            )

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: the autocast mode of the EGNN (see the class docstring)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {value!r}")
        self._precision = value

    def extra_repr(self) -> str:
        """Show the precision mode (and a backbone other than the EGNN) in ``repr``."""
        return f"precision={self.precision!r}" + ("" if self.backbone == "egnn" else f", backbone={self.backbone!r}")

    def forward(
        self, pos: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor,
        context: torch.Tensor | None = None, self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
        bonds: torch.Tensor | None = None, fixed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Apply the layer; shapes as in the class docstring (bonds: ``bond_classes``; fixed: ``fragment_input``)."""
        num_graphs = t.shape[0]
        feats = [h, t.reshape(num_graphs, 1).to(h.dtype)[batch]]
        if self.context_nf:
            if context is None or context.shape != (num_graphs, self.context_nf):
                raise ValueError(f"this denoiser needs a context of shape [{num_graphs}, {self.context_nf}]")
            feats.append(context.to(h.dtype)[batch])
        edge_index = fully_connected_edges(batch)
        edge_extra = None
        if self.self_condition:
            if self_cond is None:
                feats.append(torch.zeros_like(h))
                edge_extra = torch.zeros(edge_index.shape[1], 1, dtype=pos.dtype, device=pos.device)
            else:
                feats.append(self_cond[1].to(h.dtype))
                row, col = edge_index
                edge_extra = ((self_cond[0][row] - self_cond[0][col]) ** 2).sum(1, keepdim=True).to(pos.dtype)
        if self.fragment_input:  # last column: a grown network reads it with zero weights
            flag = torch.zeros(h.shape[0], 1, dtype=h.dtype, device=h.device) if fixed is None else \
                fixed.reshape(h.shape[0], 1).to(h.dtype)
            feats.append(flag)
        pairs = None
        if self.bond_classes:
            pairs = molecule_pairs(batch)
            if bonds is None or bonds.shape != (pairs.shape[1], self.bond_classes):
                raise ValueError(f"this denoiser needs bonds of shape [{pairs.shape[1]}, {self.bond_classes}] "
                                 "(one row per atom pair)")
            bonds = bonds.to(pos.dtype)
            edge_bonds = bonds[pair_lookup(pairs, edge_index, batch.shape[0], check=False)]  # valid by construction
            edge_extra = edge_bonds if edge_extra is None else torch.cat([edge_extra, edge_bonds], dim=1)
        amp_dtype = PRECISIONS[self.precision]
        with contextlib.nullcontext() if amp_dtype is None else torch.autocast(pos.device.type, dtype=amp_dtype):
            if self.backbone == "egnn":
                h_out, pos_out, hidden = self.egnn(torch.cat(feats, dim=1), pos, edge_index, edge_extra,
                                                   return_hidden=True)
            else:
                h_out, pos_out, hidden = self.eqattn(torch.cat(feats, dim=1), pos, edge_index, edge_extra,
                                                     return_hidden=True, batch=batch)
            bond_logits = None
            if self.bond_head is not None:
                i, j = pairs
                with no_autocast(pos):
                    d2 = ((pos_out[i] - pos_out[j]) ** 2).sum(1, keepdim=True)
                bond_logits = self.bond_head(torch.cat([hidden[i] + hidden[j], d2.to(hidden.dtype),
                                                        bonds.to(hidden.dtype)], dim=1)).to(pos.dtype)
        eps_h = h_out[:, : self.in_node_nf].to(h.dtype)
        with no_autocast(pos):
            eps_pos = remove_mean(pos_out.to(pos.dtype) - pos, batch, num_graphs)
        if not (torch.isfinite(eps_pos).all() and torch.isfinite(eps_h).all()):
            # EDM resets a NaN output to zero with a warning; we do the same so that one diverged
            # molecule cannot poison a whole sampling batch.
            eps_pos = torch.nan_to_num(eps_pos, nan=0.0, posinf=0.0, neginf=0.0)
            eps_h = torch.nan_to_num(eps_h, nan=0.0, posinf=0.0, neginf=0.0)
        if bond_logits is not None:
            return eps_pos, eps_h, torch.nan_to_num(bond_logits, nan=0.0, posinf=0.0, neginf=0.0)
        return eps_pos, eps_h
