"""Spherical linear interpolation on batches of vectors.

The angle comes from the per-vector norms and dot product; the weights are applied to the original vectors, so the
result keeps the inputs' scale. Half-precision inputs are computed in float32 and cast back.

Both ends of every arc sit in one (..., 2, D) tensor, so a single matmul gives both norms and the dot product: the
merge gathers its pairs in that form, and at a few hundred tokens the cost is the number of ops, not the flops.
"""

from __future__ import annotations

import torch

# Beyond this |cos θ| the sine weights lose precision (θ near 0 or π): interpolate linearly instead.
LINEAR_THRESHOLD = 0.9995
# Norms outside this range risk float32 under- or overflow: such calls rescale each pair first.
_SAFE_NORMS = (1e-15, 1e15)


def slerp(v0: torch.Tensor, v1: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Interpolate from ``v0`` (t=0) to ``v1`` (t=1) along the arc between them.

    v0, v1: (..., D), broadcastable against each other; t: a float or a tensor broadcastable to (..., 1), one t per
    vector. Zero vectors have no direction and nearly (anti-)parallel pairs an ill-conditioned angle: both fall back
    to linear interpolation, so every finite input gives a finite answer (saturated at the dtype's range).
    A vector interpolated with itself comes back bit for bit.
    """
    if v0.shape[-1] != v1.shape[-1]:
        raise ValueError(f"slerp: vectors must share their last dimension, got {v0.shape[-1]} and {v1.shape[-1]}")
    return slerp_pairs(torch.stack(torch.broadcast_tensors(v0, v1), dim=-2), t)


def slerp_pairs(pairs: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """``slerp(pairs[..., 0, :], pairs[..., 1, :], t)`` for pairs (..., 2, D) -> (..., D)."""
    if pairs.dim() < 2 or pairs.shape[-2] != 2:
        raise ValueError(f"slerp_pairs: expected (..., 2, D), got shape {tuple(pairs.shape)}")
    out_dtype = pairs.dtype
    if not out_dtype.is_floating_point:
        raise ValueError(f"slerp: floating-point vectors expected, got {out_dtype}")
    x = pairs.to(torch.float64 if out_dtype == torch.float64 else torch.float32)

    gram = x @ x.transpose(-1, -2)  # (..., 2, 2): squared norms on the diagonal, the dot product off it
    lo, hi = _SAFE_NORMS[0] ** 2, _SAFE_NORMS[1] ** 2
    safe = x.numel() == 0 or _within(gram.diagonal(dim1=-2, dim2=-1), lo, hi)  # the usual case: one reduction
    if safe:
        out = _slerp(x, gram, t, no_zeros=True)
    else:  # zero vectors, or norms whose squares under- or overflow
        # The angle does not depend on each vector's scale: take it from vectors scaled to a max |x| of 1 (zero
        # vectors stay zero). The weights go to the pair under one common power of two, so their sum cannot
        # overflow and a vector merged with itself still comes back bit for bit.
        own = x.abs().amax(-1, keepdim=True)  # (..., 2, 1)
        own = torch.where(own > 0, own, 1.0)
        unit = x / own
        common = torch.exp2(torch.floor(torch.log2(own.amax(-2, keepdim=True))))  # (..., 1, 1)
        out = _slerp(x / common, unit @ unit.transpose(-1, -2), t, no_zeros=False) * common[..., 0, :]
    if out.dtype != out_dtype or not safe:
        info = torch.finfo(out_dtype)
        out = out.clamp_(info.min, info.max)
    return out.to(out_dtype)


def _slerp(x: torch.Tensor, gram: torch.Tensor, t: float | torch.Tensor, no_zeros: bool) -> torch.Tensor:
    """The formula on well-scaled pairs (..., 2, D), given a Gram matrix of the same directions (it may be of
    differently scaled vectors). Writes only to new tensors."""
    na, nb = gram.diagonal(dim1=-2, dim2=-1).sqrt().unbind(-1)  # (...) each; square roots first: no overflow below
    dot = gram[..., 0, 1]
    if no_zeros:
        cos = dot / (na * nb)
    else:  # a zero vector reads as parallel: linear
        denom = na * nb
        cos = torch.where(denom > 0, dot / denom.clamp_min(1e-300), 1.0)
    cos = cos[..., None]  # (..., 1)
    linear = cos.abs() > LINEAR_THRESHOLD
    a, b = x.unbind(-2)  # views (..., D)
    if isinstance(t, float) and t == 0.5:  # the merge's case, decided without reading a tensor
        # sin(θ/2) / sin θ = 1 / (2 cos(θ/2)) = (2 + 2 cos θ)^(-1/2); 4^(-1/2) = 0.5 where linear
        w = torch.where(linear, 4.0, cos.mul(2.0).add_(2.0)).rsqrt_()
        return torch.add(a, b).mul_(w)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    theta = torch.acos(torch.where(linear, 1.0, cos.clamp(-1.0, 1.0)))  # θ = 0 where linear: no 0/0 below
    sin_theta = torch.where(linear, 1.0, torch.sin(theta))
    w0 = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * theta) / sin_theta)
    w1 = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    return torch.mul(a, w0).addcmul_(b, w1)


def _within(x: torch.Tensor, lo: float, hi: float) -> bool:
    smallest, largest = x.detach().aminmax()
    return lo < float(smallest) and float(largest) < hi
