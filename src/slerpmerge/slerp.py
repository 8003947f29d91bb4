"""Spherical linear interpolation on batches of vectors.

The angle comes from the per-vector norms and dot product; the weights are applied to the original vectors, so the
result keeps the inputs' scale. Half-precision inputs are computed in float32 and cast back.
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
    out_dtype = torch.promote_types(v0.dtype, v1.dtype)
    if not out_dtype.is_floating_point:
        raise ValueError(f"slerp: floating-point vectors expected, got {out_dtype}")
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    a, b = v0.to(work), v1.to(work)
    t = torch.as_tensor(t, dtype=work, device=a.device)

    na, nb = torch.linalg.vector_norm(a, dim=-1), torch.linalg.vector_norm(b, dim=-1)  # (...)
    lo, hi = _SAFE_NORMS
    nonzero = torch.cat([na.reshape(-1), nb.reshape(-1)])
    nonzero = nonzero[nonzero != 0]
    safe = nonzero.numel() == 0 or (lo < float(nonzero.min()) and float(nonzero.max()) < hi)
    if safe:
        out = _slerp(a, b, t, na, nb)
    else:  # one common scale per pair keeps huge inputs from overflowing and tiny ones from underflowing
        scale = torch.maximum(a.abs().amax(-1, keepdim=True), b.abs().amax(-1, keepdim=True))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        a, b = a / scale, b / scale
        na, nb = torch.linalg.vector_norm(a, dim=-1), torch.linalg.vector_norm(b, dim=-1)
        out = _slerp(a, b, t, na, nb) * scale
    if out.dtype != out_dtype or not safe:
        info = torch.finfo(out_dtype)
        out = out.clamp_(info.min, info.max)
    return out.to(out_dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    """The formula on well-scaled vectors, given their norms. Writes only to new tensors."""
    denom = na * nb
    dot = torch.einsum("...d,...d->...", a, b)  # fused: no (..., D) temporary
    cos = torch.where(denom > 0, dot / denom.clamp_min(1e-300), 1.0)
    cos = cos.clamp(-1.0, 1.0)[..., None]  # (..., 1); a zero vector reads as parallel: linear
    linear = cos.abs() > LINEAR_THRESHOLD
    theta = torch.acos(torch.where(linear, 1.0, cos))  # θ = 0 where linear: no 0/0 below
    sin_theta = torch.where(linear, 1.0, torch.sin(theta))
    w1 = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    if t.dim() == 0 and float(t) == 0.5:  # the merge's case: both weights equal, one pass fewer
        return torch.add(a, b).mul_(w1)
    w0 = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * theta) / sin_theta)
    return torch.mul(a, w0).addcmul_(b, w1)
