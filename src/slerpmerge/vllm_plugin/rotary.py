"""Rotary embeddings at merged positions, from vLLM's own rotary module.

A merged token sits at its span's mean position, which is fractional; vLLM's rotary modules look cos and sin up
in a table of whole positions. Whole positions still come from that table (so unmerged rows are bit for bit what
the engine computes); fractional ones from the module's own frequencies, rotated by its own code.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
from vllm.model_executor.layers.rotary_embedding.llama3_rope import Llama3RotaryEmbedding

from .. import methods

# The classes whose table is position x frequencies, with frequencies from `_compute_inv_freq(base)`.
PLAIN = (RotaryEmbedding, Llama3RotaryEmbedding)


def fractional_positions(settings) -> bool:
    """Whether the later layers see fractional positions: merged spans at their mean position. Kept tokens (prune,
    drop) and reindexed ones sit at whole positions, which any rotary module takes as it is."""
    return settings.positions == "original" and methods.get(settings.method).combine is not methods.combine.last


def check_fractional(rope: nn.Module, method: str) -> None:
    """Refuse at engine start a rotary module whose cos and sin slerpmerge cannot evaluate between positions."""
    if type(rope) not in PLAIN:
        raise ValueError(
            f"method {method!r} places merged tokens at fractional positions, and slerpmerge cannot evaluate "
            f"{type(rope).__name__} (this model's rotary scaling) between whole positions. Settings that work with "
            "it: method 'prune' or 'drop', or positions 'reindex' (the \"slerpmerge\" entry of --hf-overrides; "
            "`slerpmerge vllm-args` writes it)")


class FractionalRotary(nn.Module):
    """Wraps a later layer's rotary module (one `check_fractional` let through): integer positions go to it
    unchanged, float positions get cos/sin computed at those positions."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.rope = rope

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None):
        if not positions.is_floating_point():
            return self.rope(positions, query, key)
        rope = self.rope
        table = self.cos_sin(positions)  # (T', rotary_dim)
        index = torch.arange(positions.shape[0], device=positions.device)
        return RotaryEmbedding.forward_static(index, query, key, rope.head_size, rope.rotary_dim, table,
                                              rope.is_neox_style)

    def cos_sin(self, positions: torch.Tensor) -> torch.Tensor:
        rope = self.rope
        cache = rope.cos_sin_cache
        whole = positions.round()
        exact = cache.index_select(0, whole.long().clamp(0, cache.shape[0] - 1))
        inv_freq = rope._compute_inv_freq(rope.base).to(positions.device)
        freqs = positions.float()[:, None] * inv_freq[None]  # (T', rotary_dim / 2)
        computed = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(cache.dtype)
        return torch.where((positions == whole)[:, None], exact, computed)
