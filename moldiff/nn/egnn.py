"""E(n)-equivariant graph layers (Satorras et al., 2021) in EDM's "egnn_new" form.

Layers act on sparse graphs: ``h [N, F]`` invariant features, ``pos [N, 3]`` positions and an
``edge_index [2, E]`` of directed edges ``(i <- j)`` stored as ``(row=i, col=j)``. They know
nothing about diffusion, time or molecules.

EDM computes the first layer of every edge MLP on the concatenation ``[h_i, h_j, e_ij]``. That
linear map splits as ``W_i h_i + W_j h_j + W_e e_ij``; with ``node_projection=True`` (default) we
apply ``W_i``/``W_j`` once per *node* and gather, instead of once per *edge*. The parameters and the
result are identical (one ``nn.Linear`` either way), only the FLOPs differ (E x 2F x F -> N x 2F x F).

Mixed precision: every operation on positions (pairwise differences, squared distances, the
coordinate update ``pos + sum_j unit_ij * phi_ij``) runs under :func:`no_autocast`, so under an
enclosing ``torch.autocast`` (e.g. ``EGNNDenoiser(precision="bf16")``) only the invariant MLPs run
in low precision while positions stay in their own dtype (float32). Without autocast nothing changes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from moldiff.geometry import scatter_sum


def no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast on ``t``'s device for the enclosed (position) arithmetic.

    A null context when autocast is off, so full-precision runs pay nothing and stay bit-identical.

    >>> pos = torch.zeros(2, 3)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16), no_autocast(pos):
    ...     (pos @ pos.t()).dtype
    torch.float32
    """
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def _edge_input_linear(
    lin: nn.Linear, h: torch.Tensor, edge_attr: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
    node_projection: bool,
) -> torch.Tensor:
    """Apply ``lin`` to ``[h[row], h[col], edge_attr]`` for every edge, optionally per node first.

    The per-node path writes the ``[E, F]`` result once and then updates it in place (gather, add
    the second gather, ``addmm_`` the edge features): every ``[E, F]`` temporary is a large
    allocation, and on CPU those cost as much as the arithmetic (see ``benchmarks/README.md``).
    """
    nf = h.shape[1]
    if not node_projection:
        return lin(torch.cat([h[row], h[col], edge_attr], dim=1))
    w = lin.weight
    p_i = torch.addmm(lin.bias, h, w[:, :nf].t())  # [N, F], bias folded in per node
    p_j = h @ w[:, nf : 2 * nf].t()
    out = p_i.index_select(0, row)
    out += p_j.index_select(0, col)
    # explicit casts: autocast does not cover in-place ops, and under it ``out`` is low precision
    return out.addmm_(edge_attr.to(out.dtype), w[:, 2 * nf :].t().to(out.dtype))


class GCL(nn.Module):
    """Invariant graph convolution with optional attention (EDM ``GCL``).

    ``m_ij = SiLU(W2 SiLU(W1 [h_i, h_j, e_ij]))``, optionally ``m_ij *= sigmoid(w_a m_ij)``;
    ``h_i <- h_i + MLP([h_i, sum_j m_ij / normalization_factor])``.

    Args:
        hidden_nf: feature width ``F``.
        edge_nf: number of edge features.
        attention: gate messages with a sigmoid attention weight.
        normalization_factor: divide the summed messages by this (EDM's released models: 1).
        node_projection: compute the first edge layer per node (see module docstring).

    Shapes:
        h ``[N, F]``, edge_index ``[2, E]``, edge_attr ``[E, edge_nf]`` -> ``[N, F]``.
    """

    def __init__(
        self, hidden_nf: int, edge_nf: int, attention: bool = True, normalization_factor: float = 1.0,
        node_projection: bool = True,
    ) -> None:
        super().__init__()
        self.edge_in = nn.Linear(2 * hidden_nf + edge_nf, hidden_nf)
        self.edge_out = nn.Linear(hidden_nf, hidden_nf)
        self.att = nn.Linear(hidden_nf, 1) if attention else None
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden_nf, hidden_nf), nn.SiLU(), nn.Linear(hidden_nf, hidden_nf)
        )
        self.act = nn.SiLU(inplace=True)  # applied only to fresh linear outputs
        self.normalization_factor = normalization_factor
        self.node_projection = node_projection

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """Apply the layer; shapes as in the class docstring."""
        row, col = edge_index
        m = self.act(_edge_input_linear(self.edge_in, h, edge_attr, row, col, self.node_projection))
        m = self.act(self.edge_out(m))
        if self.att is not None:
            gate = torch.sigmoid(self.att(m))
            # in place only without autograd: ``att`` saved ``m`` for its weight gradient
            m = m * gate if torch.is_grad_enabled() else m.mul_(gate)
        agg = scatter_sum(m, row, h.shape[0]) / self.normalization_factor
        return h + self.node_mlp(torch.cat([h, agg], dim=1))


class EquivariantUpdate(nn.Module):
    """Equivariant coordinate update (EDM ``EquivariantUpdate``).

    ``pos_i <- pos_i + sum_j (pos_i - pos_j) / (|pos_i - pos_j| + c) * tanh(phi(h_i, h_j, e_ij)) * r
    / normalization_factor``, with ``r = coords_range`` when ``tanh`` is on.

    Shapes:
        h ``[N, F]``, pos ``[N, 3]``, edge_index ``[2, E]``, edge_attr ``[E, edge_nf]`` -> ``[N, 3]``.
    """

    def __init__(
        self, hidden_nf: int, edge_nf: int, tanh: bool = True, coords_range: float = 15.0,
        norm_constant: float = 1.0, normalization_factor: float = 1.0, node_projection: bool = True,
    ) -> None:
        super().__init__()
        self.lin_in = nn.Linear(2 * hidden_nf + edge_nf, hidden_nf)
        self.lin_mid = nn.Linear(hidden_nf, hidden_nf)
        self.lin_out = nn.Linear(hidden_nf, 1, bias=False)
        nn.init.xavier_uniform_(self.lin_out.weight, gain=0.001)
        self.act = nn.SiLU(inplace=True)  # applied only to fresh linear outputs
        self.tanh = tanh
        self.coords_range = coords_range
        self.norm_constant = norm_constant
        self.normalization_factor = normalization_factor
        self.node_projection = node_projection

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> torch.Tensor:
        """Apply the layer; shapes as in the class docstring."""
        row, col = edge_index
        w = self.act(_edge_input_linear(self.lin_in, h, edge_attr, row, col, self.node_projection))
        w = self.lin_out(self.act(self.lin_mid(w)))
        with no_autocast(pos):  # phi_ij is invariant; everything after it is in the dtype of pos
            w = w.to(pos.dtype)
            if self.tanh:
                w = torch.tanh(w) * self.coords_range
            diff = pos[row] - pos[col]
            dist = torch.sqrt((diff**2).sum(dim=1, keepdim=True) + 1e-8)
            unit = diff / (dist + self.norm_constant)
            trans = unit * w
            agg = scatter_sum(trans, row, pos.shape[0]) / self.normalization_factor
            return pos + agg


class EquivariantBlock(nn.Module):
    """One EDM ``EquivariantBlock``: a GCL then an equivariant coordinate update.

    Edge features are ``[|pos_i - pos_j|^2 at the block input, edge_attr]`` where ``edge_attr``
    holds the squared distances at the network input (so ``edge_nf = 2`` in EDM).

    Shapes:
        h ``[N, F]``, pos ``[N, 3]``, edge_index ``[2, E]``, edge_attr ``[E, 1]`` ->
        (``[N, F]``, ``[N, 3]``).
    """

    def __init__(
        self, hidden_nf: int, attention: bool = True, tanh: bool = True, coords_range: float = 15.0,
        norm_constant: float = 1.0, normalization_factor: float = 1.0, node_projection: bool = True,
        extra_edge_nf: int = 0,
    ) -> None:
        super().__init__()
        edge_nf = 2 + extra_edge_nf
        self.gcl = GCL(hidden_nf, edge_nf, attention, normalization_factor, node_projection)
        self.update = EquivariantUpdate(
            hidden_nf, edge_nf, tanh, coords_range, norm_constant, normalization_factor, node_projection
        )

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the layer; shapes as in the class docstring."""
        row, col = edge_index
        with no_autocast(pos):
            d2 = ((pos[row] - pos[col]) ** 2).sum(dim=1, keepdim=True)
            e = torch.cat([d2, edge_attr], dim=1)
        h = self.gcl(h, edge_index, e)
        pos = self.update(h, pos, edge_index, e)
        return h, pos


class EGNN(nn.Module):
    """Stack of :class:`EquivariantBlock` with input/output embeddings (EDM ``egnn_new.EGNN``).

    Args:
        in_nf: input (and output) feature width.
        hidden_nf: hidden width.
        n_layers: number of equivariant blocks.
        attention, tanh, coords_range, norm_constant, normalization_factor, node_projection: see
            the blocks. EDM passes ``coords_range = 15`` to every block (not 15 / n_layers).
        extra_edge_nf: invariant edge features given to ``forward`` beside the input distances (0: EDM;
            1 for self-conditioning, which passes the distances of the previous clean estimate).

    Shapes:
        h ``[N, in_nf]``, pos ``[N, 3]``, edge_index ``[2, E]`` -> (``[N, in_nf]``, ``[N, 3]``).
    """

    def __init__(
        self, in_nf: int, hidden_nf: int = 256, n_layers: int = 9, attention: bool = True,
        tanh: bool = True, coords_range: float = 15.0, norm_constant: float = 1.0,
        normalization_factor: float = 1.0, node_projection: bool = True, extra_edge_nf: int = 0,
    ) -> None:
        super().__init__()
        self.extra_edge_nf = extra_edge_nf
        self.embedding = nn.Linear(in_nf, hidden_nf)
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden_nf, attention, tanh, coords_range, norm_constant, normalization_factor,
                             node_projection, extra_edge_nf)
            for _ in range(n_layers)
        )
        self.embedding_out = nn.Linear(hidden_nf, in_nf)

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor, edge_extra: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Apply the layer; shapes as in the class docstring.

        ``edge_extra [E, extra_edge_nf]``: more invariant edge features, appended to the input
        distances in every block. ``return_hidden``: also return the last hidden features
        ``[N, hidden_nf]`` (before the output embedding), e.g. for an edge read-out head.
        """
        row, col = edge_index
        with no_autocast(pos):
            d2_init = ((pos[row] - pos[col]) ** 2).sum(dim=1, keepdim=True)
            if self.extra_edge_nf:
                if edge_extra is None or edge_extra.shape != (row.shape[0], self.extra_edge_nf):
                    raise ValueError(f"this EGNN needs edge_extra of shape [E, {self.extra_edge_nf}]")
                d2_init = torch.cat([d2_init, edge_extra.to(d2_init.dtype)], dim=1)
        h = self.embedding(h)
        for block in self.blocks:
            h, pos = block(h, pos, edge_index, d2_init)
        if return_hidden:
            return self.embedding_out(h), pos, h
        return self.embedding_out(h), pos
