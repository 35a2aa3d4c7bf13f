"""Zero centre-of-mass maths on sparse (PyG-style) molecule batches.

Atoms of all molecules are concatenated; ``batch[i]`` is the molecule of atom ``i``. EDM works in
the linear subspace where every molecule's mean position is zero; these helpers keep us there.
Also here: random rotations, atom pairs of the bond channel, and the noise-to-data alignment of
training (``train.align_noise``: Kabsch rotation and/or Hungarian permutation of the prior noise).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """Sum the rows of ``src [N, ...]`` into ``num`` segments given by ``index [N]``: ``[num, ...]``.

    This is ``torch_geometric.utils.scatter(..., reduce="sum")`` written with torch's own
    ``index_add_``: importing ``torch_geometric`` also imports ``torch._dynamo``; without it,
    ``moldiff sample --num 1`` went from 7.5 s to 4.1 s (``benchmarks/speed/bench_revisions.py``,
    ``benchmarks/README.md``).

    >>> scatter_sum(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 1]), 3).tolist()
    [1.0, 6.0, 0.0]
    """
    return src.new_zeros((num, *src.shape[1:])).index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """Mean of the rows of ``src`` per segment (empty segments: zero); see :func:`scatter_sum`.

    >>> scatter_mean(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([0, 1, 1]), 3).flatten().tolist()
    [1.0, 3.0, 0.0]
    """
    counts = torch.bincount(index, minlength=num).clamp_(min=1).to(src.dtype)
    return scatter_sum(src, index, num) / counts.view(-1, *([1] * (src.dim() - 1)))


def remove_mean(pos: torch.Tensor, batch: torch.Tensor, num_graphs: int | None = None) -> torch.Tensor:
    """Subtract each molecule's mean position.

    Args:
        pos: ``[N, 3]`` positions.
        batch: ``[N]`` molecule index of every atom.
        num_graphs: number of molecules (inferred from ``batch`` if omitted).

    Returns:
        ``[N, 3]`` positions with zero mean per molecule.

    >>> import torch
    >>> p = remove_mean(torch.tensor([[1.0, 0, 0], [3.0, 0, 0]]), torch.tensor([0, 0]))
    >>> p[:, 0].tolist()
    [-1.0, 1.0]
    """
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    mean = scatter_mean(pos, batch, num_graphs)
    return pos - mean[batch]


def sample_zero_com_gaussian(
    batch: torch.Tensor,
    num_graphs: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``[N, 3]`` standard Gaussian noise projected onto the zero-CoM subspace."""
    eps = torch.randn(batch.shape[0], 3, generator=generator, dtype=dtype, device="cpu")
    eps = eps.to(batch.device)
    return remove_mean(eps, batch, num_graphs)


def assert_zero_com(pos: torch.Tensor, batch: torch.Tensor, tol: float = 1e-4) -> None:
    """Raise ``ValueError`` if any molecule's mean position is further than ``tol`` from zero."""
    num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    mean = scatter_mean(pos, batch, num_graphs)
    err = mean.abs().max().item() if mean.numel() else 0.0
    if err > tol * max(1.0, pos.abs().max().item() if pos.numel() else 1.0):
        raise ValueError(f"positions are not centred: max |mean| = {err:.3g}")


def random_rotation(
    dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None, reflect: bool = False
) -> torch.Tensor:
    """Uniformly random ``3x3`` rotation (QR of a Gaussian matrix); optionally a reflection."""
    a = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = -q
    return q.to(dtype)


def rotate_batch(pos: torch.Tensor, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent random rotation to each molecule (data augmentation)."""
    num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    rots = torch.stack([random_rotation(pos.dtype, generator) for _ in range(num_graphs)]).to(pos.device)
    return torch.einsum("nij,nj->ni", rots[batch], pos)


def num_atoms_per_graph(batch: torch.Tensor, num_graphs: int | None = None) -> torch.Tensor:
    """``[B]`` number of atoms of every molecule."""
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return torch.bincount(batch, minlength=num_graphs)


# --------------------------------------------------------------------------- atom pairs (bond channel)
def molecule_pairs(batch: torch.Tensor) -> torch.Tensor:
    """Every unordered pair ``(i, j), i < j`` of atoms in the same molecule, in row-major order.

    The edge set of a bond channel: each pair carries one bond class (``0`` = no bond). The order is
    that of :func:`moldiff.nn.denoiser.fully_connected_edges` restricted to ``i < j`` (sorted by
    ``i``, then ``j``), so pair keys ``i * N + j`` are strictly increasing.

    Args:
        batch: ``[N]`` sorted molecule index of every atom.

    Returns:
        ``[2, P]`` long, ``P = sum_b n_b (n_b - 1) / 2``.

    >>> molecule_pairs(torch.tensor([0, 0, 0, 1, 1])).tolist()
    [[0, 0, 1, 3], [1, 2, 2, 4]]
    """
    n = batch.shape[0]
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    counts = torch.bincount(batch)
    first = torch.cumsum(counts, 0) - counts  # first atom of every molecule
    after = first[batch] + counts[batch] - 1 - torch.arange(n, device=batch.device)  # atoms after me
    row = torch.repeat_interleave(torch.arange(n, device=batch.device), after)
    start = torch.cumsum(after, 0) - after
    offset = torch.arange(row.shape[0], device=batch.device) - torch.repeat_interleave(start, after)
    return torch.stack([row, row + 1 + offset])


def pair_lookup(pairs: torch.Tensor, index: torch.Tensor, num_atoms: int, check: bool = True) -> torch.Tensor:
    """Position in ``pairs`` (:func:`molecule_pairs`) of every atom pair in ``index [2, E]``, either order.

    Used to give every directed edge ``(i, j)`` and ``(j, i)`` the label of its unordered pair, and
    to place a molecule's bonds among its pairs. Raises ``ValueError`` for a pair that is not in
    ``pairs`` (atoms of different molecules, or ``i == j``); ``check=False`` skips that test (a
    device sync that also breaks ``torch.compile`` graphs) for inputs valid by construction, such
    as the network's own fully connected edges.

    >>> p = molecule_pairs(torch.tensor([0, 0, 0]))
    >>> pair_lookup(p, torch.tensor([[2, 0], [1, 1]]), 3).tolist()
    [2, 0]
    """
    keys = pairs[0] * num_atoms + pairs[1]
    lo, hi = torch.minimum(index[0], index[1]), torch.maximum(index[0], index[1])
    query = lo * num_atoms + hi
    pos = torch.searchsorted(keys, query).clamp_(max=max(keys.shape[0] - 1, 0))
    if not check:
        return pos
    if keys.numel() == 0 and query.numel():
        raise ValueError("atom pairs given, but the batch has no pairs")
    if query.numel() and not bool((keys[pos] == query).all()):
        raise ValueError("an atom pair is not a pair of distinct atoms of one molecule")
    return pos


def pair_classes(
    pairs: torch.Tensor, bond_index: torch.Tensor | None, bond_type: torch.Tensor | None, num_atoms: int,
) -> torch.Tensor:
    """``[P]`` long bond class of every pair: the bond-type code, ``0`` where there is no bond.

    Args:
        pairs: ``[2, P]`` from :func:`molecule_pairs`.
        bond_index: ``[2, E]`` bonds (global atom indices, any order) or ``None`` (no bonds).
        bond_type: ``[E]`` codes ``1..4`` (``moldiff.constants.BOND_ORDERS``).
        num_atoms: ``N``.

    >>> p = molecule_pairs(torch.tensor([0, 0, 0]))
    >>> pair_classes(p, torch.tensor([[0], [2]]), torch.tensor([2]), 3).tolist()
    [0, 2, 0]
    """
    out = torch.zeros(pairs.shape[1], dtype=torch.long, device=pairs.device)
    if bond_index is not None and bond_index.numel():
        out[pair_lookup(pairs, bond_index.to(pairs.device), num_atoms)] = bond_type.to(pairs.device).long()
    return out


# --------------------------------------------------------------------------- noise-to-data alignment (training)
#: ``train.align_noise`` values (the same names as ``moldiff.config.NOISE_ALIGNMENTS``; a test checks).
NOISE_ALIGNMENTS = ("none", "rotation", "permutation", "both")


def kabsch_rotations(src: torch.Tensor, dst: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """``[B, 3, 3]`` proper rotations ``R_b`` (``det = +1``) minimising ``sum_i |R_b src_i - dst_i|^2`` per molecule.

    Kabsch: both point sets are centred per molecule, ``H = sum_i src_i dst_i^T = U S V^T`` and
    ``R = V diag(1, 1, d) U^T`` with ``d = sign det(V U^T)`` (the reflection fix). Computed in float64;
    returned in ``src.dtype``. Degenerate molecules (one atom, collinear points) get one of the
    equally optimal rotations.

    >>> src = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 2.0, 0], [0, -2.0, 0]])
    >>> dst = src[:, [1, 0, 2]] * torch.tensor([-1.0, 1, 1])  # rotated 90 degrees about z
    >>> r = kabsch_rotations(src, dst, torch.zeros(4, dtype=torch.long), 1)[0]
    >>> torch.allclose(src @ r.T, dst, atol=1e-6), round(float(torch.det(r)), 6)
    (True, 1.0)
    """
    s = remove_mean(src.double(), batch, num_graphs)
    d = remove_mean(dst.double(), batch, num_graphs)
    h = scatter_sum(s.unsqueeze(2) * d.unsqueeze(1), batch, num_graphs)  # [B, 3, 3]
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(1, 2)
    sign = torch.where(torch.det(v @ u.transpose(1, 2)) < 0, -1.0, 1.0).to(h.dtype)
    fix = torch.ones(num_graphs, 3, dtype=h.dtype, device=h.device)
    fix[:, 2] = sign
    return ((v * fix.unsqueeze(1)) @ u.transpose(1, 2)).to(src.dtype)


def align_rotation(eps: torch.Tensor, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Rotate every molecule's noise rows onto its data (:func:`kabsch_rotations`): ``R_b eps_i``.

    The rotation acts about the origin, so zero-CoM noise stays zero-CoM and every row keeps its norm.
    """
    rot = kabsch_rotations(eps, x, batch, num_graphs)
    return torch.einsum("nij,nj->ni", rot[batch], eps)


def align_permutation(eps: torch.Tensor, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Reorder every molecule's noise rows among its atoms to minimise ``sum_i |eps_pi(i) - x_i|^2``.

    Hungarian assignment (``scipy.optimize.linear_sum_assignment``, on the CPU) on the ``n x n``
    squared-distance matrix of each molecule; rows never move between molecules, so per-molecule
    sums (the centre of mass) are unchanged. ``batch`` must be sorted (molecules contiguous).
    """
    from scipy.optimize import linear_sum_assignment  # only this training option needs scipy

    n_atoms = eps.shape[0]
    if n_atoms == 0:
        return eps
    counts = torch.bincount(batch, minlength=num_graphs)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(n_atoms, device=batch.device) - first[batch]
    n_max = int(counts.max())
    pad_x = x.new_zeros(num_graphs, n_max, 3)
    pad_e = eps.new_zeros(num_graphs, n_max, 3)
    pad_x[batch, local] = x
    pad_e[batch, local] = eps
    cost = ((pad_x.unsqueeze(2) - pad_e.unsqueeze(1)) ** 2).sum(-1).detach().cpu().double().numpy()
    counts_l, first_l = counts.tolist(), first.tolist()
    perm = torch.empty(n_atoms, dtype=torch.long)
    for b in range(num_graphs):
        n, f = counts_l[b], first_l[b]
        if n == 0:
            continue
        rows, cols = linear_sum_assignment(cost[b, :n, :n])
        perm[f + torch.from_numpy(rows)] = f + torch.from_numpy(cols)
    return eps[perm.to(eps.device)]


def align_noise(
    eps: torch.Tensor, x: torch.Tensor, batch: torch.Tensor, num_graphs: int, mode: str = "both",
) -> torch.Tensor:
    """Noise-to-data alignment ("equivariant optimal transport" of SemlaFlow / EquiFM / FlowMol).

    Args:
        eps: ``[N, 3]`` zero-CoM position noise.
        x: ``[N, 3]`` zero-CoM data positions (the same scale as the noise's target; scale does not matter).
        batch: ``[N]`` sorted molecule index of every atom.
        num_graphs: ``B``.
        mode: one of :data:`NOISE_ALIGNMENTS`: ``"rotation"`` (:func:`align_rotation`),
            ``"permutation"`` (:func:`align_permutation`), ``"both"`` (rotation, then permutation;
            one round) or ``"none"`` (``eps`` itself).

    Returns:
        ``[N, 3]``: per molecule a proper rotation and/or a row permutation of ``eps`` (still zero-CoM).
    """
    if mode not in NOISE_ALIGNMENTS:
        raise ValueError(f"align_noise mode must be one of {list(NOISE_ALIGNMENTS)}, got {mode!r}")
    with torch.no_grad():
        if mode in ("rotation", "both"):
            eps = align_rotation(eps, x, batch, num_graphs)
        if mode in ("permutation", "both"):
            eps = align_permutation(eps, x, batch, num_graphs)
    return eps


def noise_aligner(mode: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] | None:
    """The ``noise_align`` callable of ``EquivariantDiffusion.loss`` for a ``train.align_noise`` value.

    ``noise_align(eps, x, batch, num_graphs) -> eps`` is :func:`align_noise` with ``mode`` bound;
    ``"none"`` gives ``None`` (the loss then runs exactly as without the option).

    >>> noise_aligner("none") is None, noise_aligner("rotation") is not None
    (True, True)
    """
    if mode not in NOISE_ALIGNMENTS:
        raise ValueError(f"train.align_noise must be one of {list(NOISE_ALIGNMENTS)}, got {mode!r}")
    return None if mode == "none" else partial(align_noise, mode=mode)
