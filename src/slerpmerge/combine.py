"""How two groups of tokens become one vector. Each rule takes both ends of every output token, gathered as
(B, S', 2, D), and the weight t (B, S', 1) of the second: the share of the tokens it stands for, 0.5 for two single
tokens. A token merged with itself comes back bit for bit under every rule."""

from __future__ import annotations

import torch

from .slerp import slerp_pairs


def slerp(pairs: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Along the arc between the two: at t = 0.5 the mean rescaled by 1/cos(θ/2)."""
    return slerp_pairs(pairs, t)


def mean(pairs: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """The weighted mean (halves first at t = 0.5: no overflow near the dtype's range)."""
    a, b = pairs.unbind(-2)
    if isinstance(t, float) and t == 0.5:
        return a.mul(0.5).add_(b, alpha=0.5)
    t = t.to(pairs.dtype)
    return torch.lerp(a, b, t)


def last(pairs: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """The later token: it has seen the most context."""
    return pairs[..., 1, :].contiguous()


COMBINES = {"slerp": slerp, "mean": mean, "last": last}
