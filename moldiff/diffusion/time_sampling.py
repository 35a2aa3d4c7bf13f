"""Training-time samplers: which diffusion step ``t_int`` in ``{0, ..., T}`` each molecule is trained at.

EDM draws ``t`` uniformly. Flow-matching models (SemlaFlow, FlowMol; Stable Diffusion 3's
logit-normal, Esser et al. 2024) draw it from a non-uniform density *without* re-weighting the loss,
which changes the effective loss weighting over noise levels and the gradient variance.

Convention: ``u = t_int / T`` is the noise level (``u = 0`` clean data, ``u = 1`` pure noise), the
reverse of the flow-matching papers' ``t`` (``t = 1`` data); a flow-matching ``Beta(a, b)`` on their
``t`` is ``Beta(b, a)`` here and their logit-normal location ``m`` is ``-m`` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Sampler names with the number of parameters each takes and its defaults (``None``: no default).
TIME_SAMPLERS: dict[str, tuple[int, tuple[float, ...] | None]] = {
    "uniform": (0, ()),
    "logit_normal": (2, (0.0, 1.0)),
    "beta": (2, None),
}


@dataclass(frozen=True)
class TimeSampler:
    """Draws training steps ``t_int [B]`` in ``{0, ..., T}`` (``T`` pure noise, 0 clean data).

    Attributes:
        name: ``"uniform"`` (EDM; exactly ``torch.randint(0, T + 1, (B,), generator=generator)``),
            ``"logit_normal"`` (``u = sigmoid(loc + scale * n)``, ``n ~ N(0, 1)``; params
            ``(loc, scale)``, default ``(0.0, 1.0)``; ``u`` is the *noise level*, so a negative
            ``loc`` puts more draws at low noise, a positive one at high noise) or ``"beta"``
            (``u ~ Beta(a, b)``; params ``(a, b)``, required; ``a > b`` emphasises high noise).
            Continuous ``u`` becomes ``t_int = round(u * T)`` clamped to ``[0, T]``.
        params: the sampler's parameters (empty: its defaults).

    >>> g = torch.Generator().manual_seed(0)
    >>> TimeSampler("logit_normal", (-0.5, 1.0)).sample(4, 1000, g).shape
    torch.Size([4])
    """

    name: str = "uniform"
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in TIME_SAMPLERS:
            raise ValueError(f"time sampler must be one of {list(TIME_SAMPLERS)}, got {self.name!r}")
        n_params, default = TIME_SAMPLERS[self.name]
        params = tuple(float(v) for v in self.params) if self.params else (default or ())
        if len(params) != n_params:
            raise ValueError(f"time sampler {self.name!r} takes {n_params} params, got {tuple(self.params)!r}")
        if not all(math.isfinite(v) for v in params):
            raise ValueError(f"time sampler {self.name!r} params must be finite, got {params!r}")
        if self.name == "logit_normal" and params[1] <= 0:
            raise ValueError(f"time sampler 'logit_normal' needs scale > 0, got {params!r}")
        if self.name == "beta" and min(params) <= 0:
            raise ValueError(f"time sampler 'beta' needs a > 0 and b > 0, got {params!r}")
        object.__setattr__(self, "params", params)

    def sample(
        self, B: int, T: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``[B]`` integer steps in ``{0, ..., T}`` (on the CPU from ``generator``, then moved to ``device``)."""
        if self.name == "uniform":
            t_int = torch.randint(0, T + 1, (B,), generator=generator)
        else:
            if self.name == "logit_normal":
                loc, scale = self.params
                u = torch.sigmoid(loc + scale * torch.randn(B, generator=generator, dtype=torch.float64))
            else:
                u = _beta(self.params[0], self.params[1], B, generator)
            t_int = torch.round(u * T).long().clamp_(0, T)
        return t_int if device is None else t_int.to(device)


def _beta(a: float, b: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` draws of ``Beta(a, b)`` as ``X / (X + Y)``, ``X ~ Gamma(a)``, ``Y ~ Gamma(b)`` (float64)."""
    x, y = _gamma(a, n, generator), _gamma(b, n, generator)
    return x / (x + y)


def _gamma(shape: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` draws of ``Gamma(shape, 1)`` by Marsaglia and Tsang's (2000) rejection method.

    Done by hand because ``torch.distributions`` (and ``torch._standard_gamma``) take no
    ``generator``: they would draw from the global RNG, and training draws must be reproducible
    from the trainer's own :class:`torch.Generator`. Every draw comes from ``generator``.
    """
    boost = shape < 1  # Gamma(a) = Gamma(a + 1) * U^(1 / a)
    d = (shape + 1 if boost else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():  # acceptance > 95%: a few rounds
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / shape)
    return out


__all__ = ["TIME_SAMPLERS", "TimeSampler"]
