"""Priors over what the diffusion model does not generate: the number of atoms ``p(N)``."""

from __future__ import annotations

import torch


class NodeCountDistribution:
    """Categorical ``p(N)`` from a histogram of training-set atom counts (EDM ``DistributionNodes``).

    Args:
        histogram: mapping ``{n_atoms: count}``.

    >>> d = NodeCountDistribution({3: 1, 5: 3})
    >>> d.max_atoms, round(float(d.log_prob(torch.tensor([5]))), 4)
    (5, -0.2877)
    """

    def __init__(self, histogram: dict[int, float]) -> None:
        hist = {int(k): float(v) for k, v in histogram.items() if float(v) > 0}
        if not hist:
            raise ValueError("the atom-count histogram is empty")
        if min(hist) < 1:
            raise ValueError("atom counts must be >= 1")
        self.max_atoms = max(hist)
        probs = torch.zeros(self.max_atoms + 1, dtype=torch.float64)
        for k, v in hist.items():
            probs[k] = v
        self.probs = probs / probs.sum()

    @property
    def histogram(self) -> dict[int, float]:
        """``{n_atoms: probability}`` for counts with non-zero mass."""
        return {int(k): float(p) for k, p in enumerate(self.probs) if p > 0}

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[num]`` atom counts drawn from ``p(N)``."""
        return torch.multinomial(self.probs, num, replacement=True, generator=generator)

    def log_prob(self, n: torch.Tensor) -> torch.Tensor:
        """``log p(N)``; ``-inf`` for counts outside the support."""
        n = n.long().cpu()
        out = torch.full(n.shape, float("-inf"), dtype=torch.float64)
        ok = (n >= 0) & (n <= self.max_atoms)
        out[ok] = torch.log(self.probs[n[ok]])
        return out
