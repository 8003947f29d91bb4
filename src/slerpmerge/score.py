"""How much each token matters at a cutoff: one score per token, for the plans that keep the best ones exact.

    attention    how much the last W real tokens (the question, the recent window) attend to each token in the
                 cutoff layer, averaged over their queries and over all heads or a calibrated few, then spread
                 to each token's neighbours (a token scores the best within `spread` tokens of it)
    similarity   the cosine of each token with the one before it (for the pairing rule that merges only
                 similar neighbours)

Pure tensor work: SDPA returns no attention weights, so scores are computed again from the layer's own queries and
keys, which an engine's adapter catches (`probe.py` on a transformers model, the vLLM plugin on its layers). The
attention score computes W rows of attention again, a few percent of the layer at most; `scorers` holds the other
ways to rank tokens from the same queries and keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Attended:
    """What a cutoff layer attended with in a prefill."""

    queries: torch.Tensor | None  # (B, H, S, d) every query, norms and rotary applied; None for a keys-only scorer
    keys: torch.Tensor  # (B, H_kv, S, d)
    mask: torch.Tensor  # (B, S) bool, real tokens
    scaling: float
    window: int | None  # a sliding layer's window
    softcap: float | None
    heads: int  # H, the query heads (scores are per query head, with or without their queries)


def neighbour_cosine(hidden_states: torch.Tensor) -> torch.Tensor:
    """(B, S, D) -> (B, S): cosine of each token with the token before it (-2 for the first; 0 for zero vectors)."""
    h = hidden_states.float()
    cur, prev = h[:, 1:], h[:, :-1]  # views: token i beside token i - 1
    dot = torch.einsum("bsd,bsd->bs", cur, prev)
    norms = torch.linalg.vector_norm(cur, dim=-1) * torch.linalg.vector_norm(prev, dim=-1)
    return torch.nn.functional.pad(dot / norms.clamp_min(1e-30), (1, 0), value=-2.0)


def spread(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, S) -> (B, S): each token's score raised to the best within ``radius`` tokens of it, so that keeping the
    best tokens keeps their neighbourhoods too. A head that finds a fact often attends to the words that name it
    ("pass key", "blue door") while the value sits a few tokens on."""
    if radius <= 0:
        return scores
    return torch.nn.functional.max_pool1d(scores[:, None], 2 * radius + 1, 1, radius)[:, 0]


def last_real(mask: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices (B, W) of each row's last ``count`` real tokens (oldest first) and which of them exist (a row
    shorter than ``count`` repeats its first token, marked False)."""
    seq = mask.shape[1]
    idx = torch.arange(seq, device=mask.device)
    end = torch.where(mask, idx, -1).amax(1, keepdim=True)  # (B, 1)
    start = torch.where(mask, idx, seq).amin(1, keepdim=True)
    want = end - count + 1 + torch.arange(count, device=mask.device)[None]  # (B, W)
    return want.clamp(min=start, max=end).clamp(min=0), want >= start


def attention_scores(queries: torch.Tensor, keys: torch.Tensor, scaling: float, query_index: torch.Tensor,
                     query_valid: torch.Tensor, key_mask: torch.Tensor, window: int | None = None,
                     heads: Sequence[int] | None = None, softcap: float | None = None,
                     per_head: bool = False) -> torch.Tensor:
    """The attention W queries pay each key, averaged over the queries and heads: (B, S), or (B, H, S) for each
    head apart with ``per_head``.

    queries (B, H, W, d) and keys (B, H_kv, S, d) as the layer attends with them (norms and rotary applied; query
    heads share key heads in groups of H / H_kv, as transformers repeats them); query_index (B, W) the queries'
    places in the sequence, query_valid (B, W) which exist; key_mask (B, S) real keys. A query sees the real keys up
    to its own place, and within ``window`` places of it on a sliding layer. ``heads``: average over these query
    heads only.
    """
    batch, num_heads, count, dim = queries.shape
    kv_heads, seq = keys.shape[1], keys.shape[2]
    q = queries.float().reshape(batch, kv_heads, num_heads // kv_heads * count, dim)
    logits = (q @ keys.float().transpose(-1, -2)).view(batch, num_heads, count, seq) * scaling  # (B, H, W, S)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    key_index = torch.arange(seq, device=keys.device)
    qi = query_index[:, None, :, None]  # (B, 1, W, 1)
    seen = key_mask[:, None, None, :].bool() & (key_index <= qi)
    if window is not None:
        seen &= key_index > qi - window
    probs = torch.softmax(logits.masked_fill(~seen, -torch.inf), dim=-1)  # every query sees itself: no empty rows
    if heads is not None:
        probs = probs[:, list(heads)]
    weight = query_valid.float()[:, None, :, None]  # (B, 1, W, 1)
    each = (probs * weight).sum(2) / weight.sum(2)  # (B, H, S)
    return each if per_head else each.mean(1)
