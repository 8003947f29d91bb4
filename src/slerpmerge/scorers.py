"""How the scored methods rank tokens, in one table: one function per way, each from the queries and keys the cutoff
layer (or the setting's `score_layer`) attends with, each giving every query head's score of every token.

    last      the attention the last `window` real tokens pay each token: the question, when the prompt ends with
              one (the default)
    heavy     the attention every later real query pays each token, over the queries that can see it ("heavy
              hitters"): needs no question, so a context compressed before its question keeps what the whole
              context kept coming back to
    keynorm   the negated norm of each token's key: keys with small norms draw attention from most queries (no
              attention computed at all)
    expected  the attention expected from the queries still to come, modelled as a Gaussian fitted to the last
              `window` real queries (the idea of kvpress's expected-attention press, at the cutoff)

Each returns (B, H, S); `importance` averages the chosen heads and spreads the score to each token's neighbours. A
setting with a `mix` ranks twice (say `last` at the cutoff and `keynorm` at layer 2) and `mixed` interleaves the two
rankings, so each keeps about half of the kept tokens: what the question asks for, and what holds facts without one.
The hooks (transformers) and the vLLM plugin both call `importance`; neither knows which scorer runs. What each
finds with and without a question, and what it costs, is measured in docs/results.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .score import Attended, attention_scores, last_real, spread


def last(a: Attended, window: int) -> torch.Tensor:
    index, valid = last_real(a.mask, min(window, a.mask.shape[1]))
    q = a.queries.gather(2, index[:, None, :, None].expand(-1, a.queries.shape[1], -1, a.queries.shape[-1]))
    return attention_scores(q, a.keys, a.scaling, index, valid, a.mask, a.window, None, a.softcap, per_head=True)


def heavy(a: Attended, window: int, chunk: int = 256) -> torch.Tensor:
    """Mean attention from every real query at or after each token, in chunks of queries ((B, H, chunk, S) at a
    time): the attention matrix of one layer, computed once more."""
    batch, heads, seq, dim = a.queries.shape
    group = heads // a.keys.shape[1]
    keys = a.keys.float().transpose(-1, -2)  # (B, H_kv, d, S)
    key_index = torch.arange(seq, device=a.mask.device)
    total = torch.zeros(batch, heads, seq, device=a.mask.device)
    for start in range(0, seq, chunk):
        q = a.queries[:, :, start:start + chunk].float()  # (B, H, c, d)
        c = q.shape[2]
        logits = (q.reshape(batch, -1, group * c, dim) @ keys).view(batch, heads, c, seq) * a.scaling
        if a.softcap:
            logits = torch.tanh(logits / a.softcap) * a.softcap
        qi = key_index[start:start + c, None]  # (c, 1)
        seen = a.mask[:, None, None, :] & (key_index <= qi) & a.mask[:, None, start:start + c, None]
        if a.window is not None:
            seen &= key_index > qi - a.window
        probs = torch.softmax(logits.masked_fill(~seen, -torch.inf), dim=-1)
        total += probs.nan_to_num(0.0).sum(2)  # a padding query sees nothing: its row is NaN, counted as 0
    seen_by = a.mask.long().flip(1).cumsum(1).flip(1)  # (B, S) real queries at or after each token
    if a.window is not None:
        seen_by = seen_by.clamp(max=a.window)
    return total / seen_by.clamp_min(1)[:, None]


def keynorm(a: Attended, window: int) -> torch.Tensor:
    norms = torch.linalg.vector_norm(a.keys.float(), dim=-1)  # (B, H_kv, S)
    return -norms.repeat_interleave(a.heads // a.keys.shape[1], 1)


def expected(a: Attended, window: int) -> torch.Tensor:
    """The attention a query drawn from the last `window` real queries' Gaussian (their mean and covariance) pays
    each token, in expectation: E[exp(s q.k)] = exp(s mu.k + s^2 k'Sigma k / 2). The recent queries stand in for
    the queries still to come, so no question is needed."""
    index, valid = last_real(a.mask, min(window, a.mask.shape[1]))
    heads, dim = a.queries.shape[1], a.queries.shape[-1]
    q = a.queries.gather(2, index[:, None, :, None].expand(-1, heads, -1, dim)).float()  # (B, H, W, d)
    w = valid.float()[:, None, :, None]  # (B, 1, W, 1)
    n = w.sum(2, keepdim=True)  # (B, 1, 1, 1)
    mean = (q * w).sum(2, keepdim=True) / n  # (B, H, 1, d)
    centred = (q - mean) * w  # (B, H, W, d)
    sigma = centred.transpose(-1, -2) @ centred / n  # (B, H, d, d)
    keys = a.keys.float().repeat_interleave(heads // a.keys.shape[1], 1)  # (B, H, S, d)
    spread_ = ((keys @ sigma) * keys).sum(-1)  # (B, H, S): k' Sigma k
    logits = (keys @ mean.transpose(-1, -2))[..., 0] * a.scaling + spread_ * a.scaling ** 2 / 2
    if a.softcap:
        logits = torch.tanh(logits / a.softcap) * a.softcap
    seen = a.mask.clone()
    if a.window is not None:  # a sliding layer's later queries see only its last `window` tokens
        places = torch.arange(a.mask.shape[1], device=a.mask.device)
        seen &= places > index[:, -1:] - a.window
    return torch.softmax(logits.masked_fill(~seen[:, None], -torch.inf), dim=-1)


SCORERS: dict[str, Callable[[Attended, int], torch.Tensor]] = {"last": last, "heavy": heavy, "keynorm": keynorm,
                                                                 "expected": expected}
KEYS_ONLY = frozenset({"keynorm"})  # read no queries: their probes neither keep nor rotate them


def importance(a: Attended, scorer: str, window: int, heads: Sequence[int] | None, radius: int) -> torch.Tensor:
    """(B, S): a scorer's per-head scores averaged over ``heads`` (all when None), spread over ``radius``."""
    per_head = SCORERS[scorer](a, window)
    pooled = per_head.mean(1) if heads is None else per_head[:, list(heads)].mean(1)
    # padding lends no score to its real neighbours (a key norm's negated score can top theirs)
    return torch.where(a.mask, spread(pooled.masked_fill(~a.mask, -torch.inf), radius), pooled)


def mixed(scores: Sequence[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
    """(B, S) from k rankings' (B, S) scores: minus each token's best place among them (0 the best), so that keeping
    the n best keeps each ranking's best n / k or so (more where they agree). Padding places last in each."""
    places = []
    for score in scores:
        if mask is not None:
            score = score.masked_fill(~mask, -torch.inf)
        order = torch.argsort(score, dim=1, descending=True, stable=True)  # (B, S) token indices, best first
        places.append(torch.argsort(order, dim=1))  # (B, S) each token's place
    return -torch.stack(places).amin(0).float()
