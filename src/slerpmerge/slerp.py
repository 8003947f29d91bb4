"""Spherical linear interpolation on batches of vectors.

The angle comes from per-vector normalised copies; the weights are applied to the original vectors, so the result
keeps the inputs' scale. Half-precision inputs are computed in float32 and cast back.
"""

from __future__ import annotations

import torch

# Beyond this |cos θ| the sine weights lose precision (θ near 0 or π): interpolate linearly instead.
LINEAR_THRESHOLD = 0.9995


def slerp(v0: torch.Tensor, v1: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Interpolate from ``v0`` (t=0) to ``v1`` (t=1) along the arc between them.

    v0, v1: (..., D), broadcastable against each other; t: a float or a tensor broadcastable to (..., 1), one t per vector.
    Zero vectors have no direction and nearly (anti-)parallel pairs an ill-conditioned angle: both fall back to
    linear interpolation, so every finite input gives a finite answer (saturated at the dtype's range).
    """
    if v0.shape[-1] != v1.shape[-1]:
        raise ValueError(f"slerp: vectors must share their last dimension, got {v0.shape[-1]} and {v1.shape[-1]}")
    out_dtype = torch.promote_types(v0.dtype, v1.dtype)
    if not out_dtype.is_floating_point:
        raise ValueError(f"slerp: floating-point vectors expected, got {out_dtype}")
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    a, b = v0.to(work), v1.to(work)
    t = torch.as_tensor(t, dtype=work, device=a.device)

    # One common scale per pair keeps huge inputs from overflowing and tiny ones from underflowing.
    scale = torch.maximum(a.abs().amax(-1, keepdim=True), b.abs().amax(-1, keepdim=True))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    a, b = a / scale, b / scale
    na, nb = torch.linalg.vector_norm(a, dim=-1, keepdim=True), torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    cos = ((a / na.clamp_min(1e-30)) * (b / nb.clamp_min(1e-30))).sum(-1, keepdim=True).clamp(-1.0, 1.0)

    linear = (cos.abs() > LINEAR_THRESHOLD) | (na == 0) | (nb == 0)
    theta = torch.acos(torch.where(linear, torch.zeros_like(cos), cos))  # θ = 0 where linear: no 0/0 below
    sin_theta = torch.sin(theta)
    safe_sin = torch.where(linear, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * theta) / safe_sin)
    w1 = torch.where(linear, t, torch.sin(t * theta) / safe_sin)

    out = (w0 * a + w1 * b) * scale
    info = torch.finfo(out_dtype)
    return out.clamp(info.min, info.max).to(out_dtype)
