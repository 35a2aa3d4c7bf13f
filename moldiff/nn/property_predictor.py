"""EDM's property classifier φ_c: an E(3)-invariant EGNN regressing one molecular property.

Satorras et al. (2021) / EDM ``qm9/property_prediction/models_property.py``: the one-hot atom types are
embedded, ``n_layers`` message-passing layers update ``h`` only (no coordinate updates, so the output
is invariant to rotations, reflections, translations and atom permutations), edge features are squared
distances, messages are gated by a learned attention weight and summed; a node MLP, a sum over the
atoms of each molecule and a graph MLP give one scalar per molecule. EDM: 7 layers, 128 features.
"""

from __future__ import annotations

import torch
from torch import nn

from moldiff.geometry import scatter_sum
from moldiff.nn.denoiser import fully_connected_edges


class InvariantGCL(nn.Module):
    """One invariant graph convolution (EGNN ``GCL`` without coordinate updates).

    ``m_ij = φ_e(h_i, h_j, |x_i − x_j|²) · σ(φ_a(m_ij))``, ``h_i ← h_i + φ_h(h_i, Σ_j m_ij)``.

    Args:
        hidden_nf: feature width.
        attention: gate messages with a sigmoid attention weight.

    Shapes:
        h ``[N, hidden_nf]``, edge_index ``[2, E]``, dist2 ``[E, 1]`` -> ``[N, hidden_nf]``.
    """

    def __init__(self, hidden_nf: int, attention: bool = True) -> None:
        super().__init__()
        act = nn.SiLU()
        nf = hidden_nf
        self.edge_mlp = nn.Sequential(nn.Linear(2 * nf + 1, nf), act, nn.Linear(nf, nf), act)
        self.node_mlp = nn.Sequential(nn.Linear(2 * nf, nf), act, nn.Linear(nf, nf))
        self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid()) if attention else None

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, dist2: torch.Tensor) -> torch.Tensor:
        """Update ``h [N, hidden_nf]`` from messages along ``edge_index [2, E]`` with ``dist2 [E, 1]``."""
        row, col = edge_index
        m = self.edge_mlp(torch.cat([h[row], h[col], dist2], dim=1))
        if self.att_mlp is not None:
            m = m * self.att_mlp(m)
        agg = scatter_sum(m, row, h.shape[0])
        return h + self.node_mlp(torch.cat([h, agg], dim=1))


class PropertyPredictor(nn.Module):
    """Invariant EGNN predicting one (normalised) property per molecule.

    Args:
        in_node_nf: width of the one-hot atom types.
        hidden_nf: feature width (EDM: 128).
        n_layers: number of :class:`InvariantGCL` layers (EDM: 7).
        attention: attention-gated messages (EDM: true).

    Shapes:
        pos ``[N, 3]``, one_hot ``[N, in_node_nf]``, batch ``[N]`` -> ``[B]`` (``B = batch.max() + 1``
        unless ``num_graphs`` is given).

    >>> m = PropertyPredictor(5, hidden_nf=8, n_layers=2)
    >>> m(torch.randn(4, 3), torch.eye(5)[[1, 0, 0, 0]], torch.tensor([0, 0, 1, 1])).shape
    torch.Size([2])
    """

    def __init__(
        self, in_node_nf: int, hidden_nf: int = 128, n_layers: int = 7, attention: bool = True
    ) -> None:
        super().__init__()
        self.in_node_nf, self.hidden_nf = in_node_nf, hidden_nf
        self.n_layers, self.attention = n_layers, attention
        act = nn.SiLU()
        self.embedding = nn.Linear(in_node_nf, hidden_nf)
        self.layers = nn.ModuleList(InvariantGCL(hidden_nf, attention) for _ in range(n_layers))
        self.node_dec = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), act, nn.Linear(hidden_nf, hidden_nf))
        self.graph_dec = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), act, nn.Linear(hidden_nf, 1))

    def hparams(self) -> dict[str, int | bool]:
        """Constructor arguments (stored with the weights)."""
        return {"in_node_nf": self.in_node_nf, "hidden_nf": self.hidden_nf, "n_layers": self.n_layers,
                "attention": self.attention}

    def forward(self, pos: torch.Tensor, one_hot: torch.Tensor, batch: torch.Tensor,
                num_graphs: int | None = None) -> torch.Tensor:
        """``[B]`` predictions from ``pos [N, 3]``, ``one_hot [N, K]`` and sorted ``batch [N]``."""
        num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
        edge_index = fully_connected_edges(batch)
        row, col = edge_index
        dist2 = ((pos[row] - pos[col]) ** 2).sum(1, keepdim=True)
        h = self.embedding(one_hot.to(pos.dtype))
        for layer in self.layers:
            h = layer(h, edge_index, dist2)
        h = self.node_dec(h)
        return self.graph_dec(scatter_sum(h, batch, num_graphs)).squeeze(1)


__all__ = ["InvariantGCL", "PropertyPredictor"]
