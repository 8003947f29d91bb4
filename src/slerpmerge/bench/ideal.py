"""The ideal prefill speedup, from counting the work each decoder layer does at the length it sees.

work(t) of one decoder layer at t tokens = 2·P·t (its linear maps, P weights) + 4·H·d·pairs(t) (q·k and a·v over
the causal query-key pairs, H query heads of size d; a sliding layer sees at most its window). With cutoff c the
layers 0..c run at S tokens and the others at S': ideal = Σ work(S) / (Σ_{≤c} work(S) + Σ_{>c} work(S')).
Embedding and the head at the last position cost the same on both sides and are left out.
"""

from __future__ import annotations

import torch

from ..architecture import layer_types


def causal_pairs(t: int, window: int | None = None) -> float:
    """Query-key pairs a causal layer computes over t tokens (within a sliding window, if any)."""
    if window is None or t <= window:
        return t * (t + 1) / 2
    return window * (window + 1) / 2 + (t - window) * window


def layer_work(model) -> list[tuple[int, int, int | None]]:
    """(linear weights P, H·d, window) of every decoder layer, read from the model's real shapes."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = getattr(config, "sliding_window", None)
    out = []
    for layer, kind in zip(model.model.layers, layer_types(config)):
        p = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
        out.append((p, heads * head_dim, window if kind == "sliding_attention" else None))
    return out


def flops(shapes, t: int) -> list[float]:
    return [2 * p * t + 4 * hd * causal_pairs(t, w) for p, hd, w in shapes]


def ideal_speedup(model, length: int, merged_lengths, cutoffs) -> float:
    """Σ work at `length` over Σ work with each stage's layers (after each cutoff) at that stage's length."""
    merged_lengths = [merged_lengths] if isinstance(merged_lengths, int) else list(merged_lengths)
    cutoffs = [cutoffs] if isinstance(cutoffs, int) else list(cutoffs)
    shapes = layer_work(model)
    seen = [length] * len(shapes)
    for cutoff, n in zip(cutoffs, merged_lengths):
        seen[cutoff + 1:] = [n] * (len(shapes) - cutoff - 1)
    merged = sum(flops([shape], t)[0] for shape, t in zip(shapes, seen))
    return sum(flops(shapes, length)) / merged


def rerun_speedup(model, length: int, cutoff: int, kept: int) -> float:
    """The ideal for selection by re-running (GemFilter): layers 0..cutoff at `length`, then all at `kept`."""
    shapes = layer_work(model)
    return sum(flops(shapes, length)) / (sum(flops(shapes[:cutoff + 1], length)) + sum(flops(shapes, kept)))
