"""Priors over what the diffusion model does not generate: ``p(N)``, ``p(c | N)`` and ``p(N | c)``."""

from __future__ import annotations

import math

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


class PropertyDistribution:
    """``p(c | N)`` per property and ``p(N | c)`` for user targets (EDM ``DistributionProperty``).

    For every atom count ``N`` and property, a ``num_bins``-bin histogram of the property over the
    generator's training molecules with that ``N``, spanning their ``[min, max]``. Sampling picks a bin
    by its count and draws uniformly inside it, so ``(N, c)`` follows the binned joint distribution of
    the training data (EDM draws every property independently given ``N``; so does this class).

    ``p(N | c*) ∝ p(N) p(c* | N)`` ranks atom counts for a requested target ``c*``. ``p(c* | N)`` is the
    histogram smoothed with a Gaussian kernel of width ``bandwidth × (global range)``, so targets
    between or beyond the observed values still get a proper (if peaked) posterior; several targets
    multiply their likelihoods (a naive-Bayes approximation).

    Args:
        histograms: ``{name: {n_atoms: (lo, hi, counts [num_bins])}}``.

    Example:
        >>> alpha = torch.tensor([10.0, 12.0, 50.0, 60.0])
        >>> d = PropertyDistribution.from_values(torch.tensor([3, 3, 9, 9]), {"alpha": alpha})
        >>> d.range("alpha"), d.sample(torch.tensor([9]), generator=torch.Generator().manual_seed(0)).shape
        ((10.0, 60.0), torch.Size([1, 1]))
    """

    def __init__(self, histograms: dict[str, dict[int, tuple[float, float, list[float]]]]) -> None:
        if not histograms:
            raise ValueError("PropertyDistribution needs at least one property")
        self.keys = tuple(histograms)
        self.hist: dict[str, dict[int, tuple[float, float, torch.Tensor]]] = {}
        for k, per_n in histograms.items():
            self.hist[k] = {int(n): (float(lo), float(hi), torch.as_tensor(c, dtype=torch.float64))
                            for n, (lo, hi, c) in per_n.items()}
            if not self.hist[k]:
                raise ValueError(f"property {k!r} has no histogram")

    @classmethod
    def from_values(cls, n_atoms: torch.Tensor, values: dict[str, torch.Tensor], num_bins: int = 1000
                    ) -> PropertyDistribution:
        """Build from ``[M]`` atom counts and ``{name: [M]}`` raw property values of the training set."""
        n_atoms = torch.as_tensor(n_atoms).long()
        out: dict[str, dict[int, tuple[float, float, list[float]]]] = {}
        for k, v in values.items():
            v = torch.as_tensor(v, dtype=torch.float64)
            out[k] = {}
            for n in torch.unique(n_atoms).tolist():
                sel = v[n_atoms == n]
                lo, hi = float(sel.min()), float(sel.max())
                if hi - lo < 1e-12:  # EDM also widens a degenerate range slightly
                    lo, hi = lo - 1e-6, hi + 1e-6
                idx = ((sel - lo) / (hi - lo) * num_bins).long().clamp(0, num_bins - 1)
                out[k][int(n)] = (lo, hi, torch.bincount(idx, minlength=num_bins).tolist())
        return cls(out)

    def to_dict(self) -> dict:
        """Plain form for checkpoints: ``{"histograms": ..., "ranges": {name: (min, max)}}``."""
        hists = {k: {n: (lo, hi, c.tolist()) for n, (lo, hi, c) in d.items()} for k, d in self.hist.items()}
        return {"histograms": hists, "ranges": {k: self.range(k) for k in self.keys}}

    @classmethod
    def from_dict(cls, d: dict) -> PropertyDistribution:
        """Inverse of :meth:`to_dict`."""
        return cls(d["histograms"])

    def range(self, key: str) -> tuple[float, float]:
        """``(min, max)`` of the property over the training molecules."""
        per_n = self.hist[key].values()
        return min(lo for lo, _, _ in per_n), max(hi for _, hi, _ in per_n)

    def sample(self, n_atoms: torch.Tensor, keys: tuple[str, ...] | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``c ~ p(c | N)`` for each molecule.

        Args:
            n_atoms: ``[B]`` atom counts (each must occur in the training data).
            keys: property order of the columns (default: all, in stored order).
            generator: RNG.

        Returns:
            ``[B, C]`` raw (un-normalised) float64 values.
        """
        keys = self.keys if keys is None else tuple(keys)
        n_atoms = torch.as_tensor(n_atoms).long().reshape(-1)
        out = torch.empty(n_atoms.numel(), len(keys), dtype=torch.float64)
        for j, k in enumerate(keys):
            for i, n in enumerate(n_atoms.tolist()):
                if n not in self.hist[k]:
                    raise ValueError(f"no training molecule with {n} atoms for property {k!r}")
                lo, hi, counts = self.hist[k][n]
                b = int(torch.multinomial(counts, 1, generator=generator))
                u = float(torch.rand(1, generator=generator, dtype=torch.float64))
                out[i, j] = lo + (b + u) * (hi - lo) / counts.numel()
        return out

    def log_likelihood(self, targets: dict[str, float], bandwidth: float = 0.02) -> dict[int, float]:
        """``{N: log p(c* | N)}`` (kernel-smoothed histograms, summed over the targets)."""
        ns = sorted(set.intersection(*(set(self.hist[k]) for k in targets)))
        out = dict.fromkeys(ns, 0.0)
        for k, target in targets.items():
            lo_all, hi_all = self.range(k)
            bw = max(bandwidth * (hi_all - lo_all), 1e-9)
            for n in ns:
                lo, hi, counts = self.hist[k][n]
                nb = counts.numel()
                centres = lo + (torch.arange(nb, dtype=torch.float64) + 0.5) * (hi - lo) / nb
                logk = -0.5 * ((target - centres) / bw) ** 2 - math.log(bw * math.sqrt(2 * math.pi))
                out[n] += float(torch.logsumexp(logk + torch.log(counts / counts.sum()), 0))
        return out

    def node_posterior(self, targets: dict[str, float], node_dist: NodeCountDistribution,
                       bandwidth: float = 0.02) -> NodeCountDistribution:
        """``p(N | c*) ∝ p(N) p(c* | N)`` as a :class:`NodeCountDistribution`."""
        unknown = [k for k in targets if k not in self.hist]
        if unknown:
            raise ValueError(f"no property histogram for {unknown}; available: {', '.join(self.keys)}")
        loglik = self.log_likelihood(targets, bandwidth)
        prior = node_dist.histogram
        logs = {n: ll + math.log(prior[n]) for n, ll in loglik.items() if n in prior}
        if not logs:
            raise ValueError("no atom count is shared by p(N) and the property histograms")
        top = max(logs.values())
        return NodeCountDistribution({n: math.exp(v - top) for n, v in logs.items()})
