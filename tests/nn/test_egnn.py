"""Tests for moldiff/nn/egnn.py: E(3) equivariance (e3nn), permutation, node-projection equivalence."""

from __future__ import annotations

import pytest
import torch
from e3nn.util.test import assert_equivariant, equivariance_error
from torch import nn

from moldiff.nn.egnn import EGNN, GCL, EquivariantBlock, EquivariantUpdate

F = 16  # hidden width
TOL = 1e-9  # float64 equivariance tolerance (e3nn's FLOAT_TOLERANCE[float64])


# ---------------------------------------------------------------------------- helpers
def brute_force_edges(batch: torch.Tensor) -> torch.Tensor:
    """All (i, j), i != j, same molecule, by double loop (reference)."""
    pairs = [(i, j) for i in range(len(batch)) for j in range(len(batch)) if i != j and batch[i] == batch[j]]
    return torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)


def sq_dist(pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    row, col = edge_index
    return ((pos[row] - pos[col]) ** 2).sum(1, keepdim=True)


def randomize_(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Re-draw all parameters so that no output is trivially small (EDM inits the coordinate head at 1e-3)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def make_layer(kind: str, node_projection: bool = True, attention: bool = True) -> nn.Module:
    if kind == "GCL":
        return GCL(F, 1, attention=attention, node_projection=node_projection)
    if kind == "EquivariantUpdate":
        return EquivariantUpdate(F, 1, node_projection=node_projection)
    if kind == "EquivariantBlock":
        return EquivariantBlock(F, attention=attention, node_projection=node_projection)
    if kind == "EGNN":
        return EGNN(5, F, n_layers=2, attention=attention, node_projection=node_projection)
    raise AssertionError(kind)


def call_layer(kind: str, layer: nn.Module, pos: torch.Tensor, h: torch.Tensor, edge_index: torch.Tensor):
    """Call ``layer`` with invariant edge features derived from ``pos`` (so ``pos`` drives everything)."""
    e = sq_dist(pos, edge_index)
    if kind == "GCL":
        return layer(h, edge_index, e)
    if kind == "EquivariantUpdate":
        return layer(h, pos, edge_index, e)
    if kind == "EquivariantBlock":
        return layer(h, pos, edge_index, e)
    return layer(h, pos, edge_index)


#: Output irreps per layer: invariant features -> None, positions -> "cartesian_points".
IRREPS_OUT = {
    "GCL": [None],
    "EquivariantUpdate": ["cartesian_points"],
    "EquivariantBlock": [None, "cartesian_points"],
    "EGNN": [None, "cartesian_points"],
}
LAYERS = tuple(IRREPS_OUT)


def in_width(kind: str) -> int:
    return 5 if kind == "EGNN" else F


@pytest.fixture
def graph(float64):
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])  # includes a single-atom molecule
    pos = 1.5 * torch.randn(len(batch), 3)
    return pos, batch, brute_force_edges(batch)


# ---------------------------------------------------------------------------- E(3) equivariance
@pytest.mark.parametrize("node_projection", [True, False])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_e3_equivariant(kind, node_projection, graph):
    pos, _, edge_index = graph
    layer = randomize_(make_layer(kind, node_projection)).double()
    h = torch.randn(pos.shape[0], in_width(kind))

    def f(pos, h):
        return call_layer(kind, layer, pos, h, edge_index)

    errors = assert_equivariant(
        f, args_in=[pos, h], irreps_in=["cartesian_points", None], irreps_out=IRREPS_OUT[kind], tolerance=TOL
    )
    # rotation, rotation+reflection, each with and without translation
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}


@pytest.mark.parametrize("kind", ["GCL", "EquivariantBlock", "EGNN"])
def test_layer_e3_equivariant_without_attention(kind, graph):
    pos, _, edge_index = graph
    layer = randomize_(make_layer(kind, attention=False)).double()
    h = torch.randn(pos.shape[0], in_width(kind))
    assert_equivariant(
        lambda pos, h: call_layer(kind, layer, pos, h, edge_index),
        args_in=[pos, h],
        irreps_in=["cartesian_points", None],
        irreps_out=IRREPS_OUT[kind],
        tolerance=TOL,
    )


@pytest.mark.parametrize("kind", LAYERS)
def test_node_projection_gives_identical_outputs(kind, graph):
    """``node_projection`` is a FLOP optimisation: same parameters, same outputs."""
    pos, _, edge_index = graph
    per_node = randomize_(make_layer(kind, node_projection=True)).double()
    per_edge = make_layer(kind, node_projection=False).double()
    per_edge.load_state_dict(per_node.state_dict())
    h = torch.randn(pos.shape[0], in_width(kind))
    out_a = call_layer(kind, per_node, pos, h, edge_index)
    out_b = call_layer(kind, per_edge, pos, h, edge_index)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    for a, b in zip(out_a, out_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", LAYERS)
def test_in_place_kernels_same_outputs_and_gradients(kind, graph):
    """The per-node path updates edge tensors in place (and gates attention in place without autograd):
    outputs with and without autograd, and parameter gradients, equal the per-edge reference."""
    pos, _, edge_index = graph
    per_node = randomize_(make_layer(kind, node_projection=True)).double()
    per_edge = make_layer(kind, node_projection=False).double()
    per_edge.load_state_dict(per_node.state_dict())
    h = torch.randn(pos.shape[0], in_width(kind), dtype=torch.float64)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        no_grad_out = first(call_layer(kind, per_node, pos, h, edge_index))
    grads = []
    for layer in (per_node, per_edge):
        out = first(call_layer(kind, layer, pos, h, edge_index))
        torch.testing.assert_close(out.detach(), no_grad_out, rtol=1e-12, atol=1e-12)
        out.pow(2).sum().backward()
        grads.append({n: p.grad for n, p in layer.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-10, atol=1e-10, msg=name)


# ---------------------------------------------------------------------------- the test has teeth
class LeakyGCL(GCL):
    """Broken on purpose: adds the absolute x coordinate to the invariant features."""

    def __init__(self) -> None:
        super().__init__(F, 1)
        self.pos = None

    def forward(self, h, edge_index, edge_attr):
        return super().forward(h, edge_index, edge_attr) + self.pos[:, :1]


class AbsoluteUpdate(EquivariantUpdate):
    """Broken on purpose: scales absolute positions (rotation-equivariant, not translation-equivariant)."""

    def forward(self, h, pos, edge_index, edge_attr):
        return super().forward(h, pos, edge_index, edge_attr) + 0.1 * pos


class ChiralUpdate(EquivariantUpdate):
    """Broken on purpose: adds a cross product (a pseudo-vector): SO(3)- but not O(3)-equivariant."""

    def forward(self, h, pos, edge_index, edge_attr):
        rel = pos - pos.mean(0, keepdim=True)
        return super().forward(h, pos, edge_index, edge_attr) + torch.cross(rel, rel.roll(1, 0), dim=1)


def _errors(layer, kind, pos, edge_index):
    h = torch.randn(pos.shape[0], F)

    def f(pos, h):
        if isinstance(layer, LeakyGCL):
            layer.pos = pos
        return call_layer(kind, layer, pos, h, edge_index)

    return (
        f,
        h,
        {
            k: float(v.max())
            for k, v in equivariance_error(
                f, args_in=[pos, h], irreps_in=["cartesian_points", None], irreps_out=IRREPS_OUT[kind]
            ).items()
        },
    )


def test_broken_layer_leaking_coordinate_fails(graph):
    pos, _, edge_index = graph
    layer = randomize_(LeakyGCL()).double()
    f, h, errors = _errors(layer, "GCL", pos, edge_index)
    assert all(err > 1e-2 for err in errors.values()), errors
    with pytest.raises(AssertionError, match="equivariance error"):
        assert_equivariant(
            f, args_in=[pos, h], irreps_in=["cartesian_points", None], irreps_out=[None], tolerance=TOL
        )


def test_broken_layer_not_translation_equivariant_fails_only_translations(graph):
    pos, _, edge_index = graph
    layer = randomize_(AbsoluteUpdate(F, 1)).double()
    f, h, errors = _errors(layer, "EquivariantUpdate", pos, edge_index)
    assert errors[(0, False)] < TOL and errors[(1, False)] < TOL, errors
    assert errors[(0, True)] > 1e-2 and errors[(1, True)] > 1e-2, errors
    with pytest.raises(AssertionError, match="did_translate=True"):
        assert_equivariant(
            f,
            args_in=[pos, h],
            irreps_in=["cartesian_points", None],
            irreps_out=["cartesian_points"],
            tolerance=TOL,
        )


def test_broken_layer_chiral_fails_only_reflections(graph):
    pos, _, edge_index = graph
    layer = randomize_(ChiralUpdate(F, 1)).double()
    f, h, errors = _errors(layer, "EquivariantUpdate", pos, edge_index)
    assert errors[(0, False)] < TOL and errors[(0, True)] < TOL, errors
    assert errors[(1, False)] > 1e-2 and errors[(1, True)] > 1e-2, errors
    with pytest.raises(AssertionError, match="parity_k=1"):
        assert_equivariant(
            f,
            args_in=[pos, h],
            irreps_in=["cartesian_points", None],
            irreps_out=["cartesian_points"],
            tolerance=TOL,
        )


# ---------------------------------------------------------------------------- permutations
def permutation_within_molecules(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random permutation that only shuffles atoms inside each molecule (batch stays sorted)."""
    perm = torch.arange(len(batch))
    for b in batch.unique():
        idx = (batch == b).nonzero().flatten()
        perm[idx] = idx[torch.randperm(len(idx), generator=gen)]
    return perm


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_permutation_equivariant(kind, graph):
    pos, batch, edge_index = graph
    layer = randomize_(make_layer(kind)).double()
    h = torch.randn(pos.shape[0], in_width(kind))
    perm = permutation_within_molecules(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(perm, torch.arange(len(batch)))
    inv = torch.argsort(perm)
    # node perm[k] becomes node k: relabel every edge endpoint with inv
    out = call_layer(kind, layer, pos, h, edge_index)
    out_p = call_layer(kind, layer, pos[perm], h[perm], inv[edge_index])
    out = out if isinstance(out, tuple) else (out,)
    out_p = out_p if isinstance(out_p, tuple) else (out_p,)
    for a, b in zip(out, out_p, strict=True):
        torch.testing.assert_close(a[perm], b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- shapes, edge cases, repr
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_output_shapes_and_dtype(kind, dtype, device):
    batch = torch.tensor([0, 0, 0, 1, 1], device=device)
    edge_index = brute_force_edges(batch.cpu()).to(device)
    pos = torch.randn(5, 3, dtype=dtype, device=device)
    h = torch.randn(5, in_width(kind), dtype=dtype, device=device)
    layer = make_layer(kind).to(device=device, dtype=dtype)
    out = call_layer(kind, layer, pos, h, edge_index)
    out = out if isinstance(out, tuple) else (out,)
    expected = {None: (5, in_width(kind)), "cartesian_points": (5, 3)}
    for o, irr in zip(out, IRREPS_OUT[kind], strict=True):
        assert o.shape == expected[irr]
        assert o.dtype == dtype and o.device.type == device.type
        assert torch.isfinite(o).all()


def test_isolated_atom_position_unchanged(float64):
    """An atom without edges receives no coordinate message."""
    layer = randomize_(EquivariantUpdate(F, 1)).double()
    pos = torch.randn(1, 3)
    out = layer(torch.randn(1, F), pos, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 1))
    torch.testing.assert_close(out, pos, rtol=0, atol=0)


def test_coordinate_head_init_is_small():
    """EDM initialises the coordinate head with gain 1e-3 so the first updates are tiny."""
    layer = EquivariantUpdate(F, 1)
    assert layer.lin_out.weight.abs().max() < 1e-2
    assert layer.lin_out.bias is None


def test_egnn_repr_lists_blocks():
    r = repr(EGNN(5, F, n_layers=2))
    assert "2 x EquivariantBlock" in r and "GCL" in r and "EquivariantUpdate" in r
