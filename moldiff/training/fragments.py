"""Training masks of fragment-conditioned models (DiffLinker-style): which atoms a molecule keeps fixed.

A molecule drawn with probability ``prob`` regenerates a random connected group of ``k`` heavy
atoms (``k`` uniform in ``[lo, hi]``, at most ``n_heavy - 1``) together with their hydrogens; all
its other atoms are fixed (they enter the forward process clean, see
:meth:`moldiff.diffusion.process.EquivariantDiffusion.loss`). Molecules not drawn have no fixed
atom. The group grows from a uniformly drawn heavy atom by adding, one at a time, a uniformly drawn
neighbour of the group (a randomised breadth-first search) over the covalent graph: the batch's
bonds when it has them, else heavy-atom pairs closer than ``cutoff`` (1.9 Å: longer than every
heavy-atom bond of QM9 and GEOM-drugs, C-Cl 1.79 Å, and shorter than the non-bonded 1-3 distances,
about 2.4 Å). If the start atom's connected component is smaller than ``k``, the group is the whole
component. Each hydrogen goes with its nearest heavy atom. Every draw uses the one generator given,
molecule by molecule, so a run (and its resume) is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moldiff.geometry import molecule_pairs

#: Heavy-atom pairs closer than this (Å) are bonded when the batch carries no bonds.
BOND_CUTOFF = 1.9


def _randint(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def _heavy_neighbours(pos: torch.Tensor, heavy: torch.Tensor, batch: torch.Tensor,
                      bond_index: torch.Tensor | None, cutoff: float) -> list[list[int]]:
    """Neighbour lists of the covalent heavy-atom graph (CPU tensors in, sorted lists out)."""
    if bond_index is not None:
        row, col = bond_index
    else:
        row, col = molecule_pairs(batch)
        close = ((pos[row] - pos[col]) ** 2).sum(1) < cutoff**2
        row, col = row[close], col[close]
    keep = heavy[row] & heavy[col]
    nbrs: list[list[int]] = [[] for _ in range(pos.shape[0])]
    for i, j in zip(row[keep].tolist(), col[keep].tolist(), strict=True):
        nbrs[i].append(j)
        nbrs[j].append(i)
    return [sorted(set(n)) for n in nbrs]


def _grow_group(start: int, k: int, nbrs: list[list[int]], generator: torch.Generator | None) -> set[int]:
    """A random connected group of ``k`` atoms containing ``start`` (smaller if its component is)."""
    group, frontier = {start}, sorted(set(nbrs[start]))
    while len(group) < k and frontier:
        atom = frontier.pop(_randint(len(frontier), generator))
        group.add(atom)
        frontier = sorted(set(frontier) | {j for j in nbrs[atom] if j not in group})
    return group


def fragment_mask(
    pos: torch.Tensor, heavy: torch.Tensor, batch: torch.Tensor, num_graphs: int, prob: float,
    free_range: Sequence[int], generator: torch.Generator | None = None, bond_index: torch.Tensor | None = None,
    cutoff: float = BOND_CUTOFF,
) -> torch.Tensor:
    """``[N]`` bool, the atoms a training batch keeps fixed (see the module docstring).

    Args:
        pos: ``[N, 3]`` positions (Å).
        heavy: ``[N]`` bool, non-hydrogen atoms.
        batch: ``[N]`` sorted molecule index.
        num_graphs: ``B``.
        prob: probability that a molecule gets a fragment fixed.
        free_range: ``(lo, hi)``, range of the number of heavy atoms regenerated.
        generator: RNG (``B`` uniform draws, then per drawn molecule: ``k``, the start atom, each
            growth step).
        bond_index: ``[2, E]`` the batch's bonds (global atom pairs), or ``None``: heavy-atom pairs
            within ``cutoff``.
        cutoff: bond cutoff (Å) without ``bond_index``.

    Returns:
        ``[N]`` bool on ``pos``'s device; molecules with fewer than 2 heavy atoms keep nothing fixed.

    A chain C0-C1-C2 with a hydrogen on C0; two connected heavy atoms are regenerated:

    >>> pos = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0, 0], [-1.0, 0, 0]])
    >>> fragment_mask(pos, torch.tensor([True, True, True, False]), torch.zeros(4, dtype=torch.long), 1,
    ...               1.0, (2, 2), torch.Generator().manual_seed(0)).tolist()
    [True, False, False, True]
    """
    device = pos.device
    fixed = torch.zeros(pos.shape[0], dtype=torch.bool)
    chosen = (torch.rand(num_graphs, generator=generator) < prob).tolist()
    if not any(chosen):
        return fixed.to(device)
    pos, heavy, batch = pos.detach().cpu().to(torch.float64), heavy.cpu().bool(), batch.cpu()
    nbrs = _heavy_neighbours(pos, heavy, batch, None if bond_index is None else bond_index.cpu(), cutoff)
    counts = torch.bincount(batch, minlength=num_graphs).tolist()
    first = 0
    lo, hi = int(free_range[0]), int(free_range[1])
    for b, n in enumerate(counts):
        atoms = torch.arange(first, first + n)
        first += n
        hv = atoms[heavy[atoms]]
        if not chosen[b] or hv.numel() < 2:
            continue
        top = min(hi, hv.numel() - 1)
        bottom = min(lo, top)
        k = bottom + _randint(top - bottom + 1, generator)
        group = _grow_group(int(hv[_randint(hv.numel(), generator)]), k, nbrs, generator)
        free = torch.zeros(n, dtype=torch.bool)
        free[torch.tensor(sorted(group)) - int(atoms[0])] = True
        hyd = atoms[~heavy[atoms]]
        if hyd.numel():  # each hydrogen follows its nearest heavy atom
            nearest = hv[torch.cdist(pos[hyd], pos[hv]).argmin(1)]
            free[hyd - int(atoms[0])] = free[nearest - int(atoms[0])]
        fixed[atoms] = ~free
    return fixed.to(device)
