"""A merge method applied to hidden states and positions: plan the groups, then combine them round by round.

Pure tensor work with no model in sight: `hooks.py` calls it after a cutoff layer, the tests call it on random
vectors. Each output token stands for a contiguous span of input tokens; its vector comes from combining the two
halves of the span (weighted by how many tokens each stands for) and its position is the span's mean position.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import methods
from .plan import MergePlan, identity_plan, plan_merge, unpadded_plan
from .settings import check_options

__all__ = ["Merged", "MergePlan", "apply_plan", "merge_positions", "merge_sequence", "merged_length", "plan_merge"]


@dataclass(frozen=True)
class Merged:
    hidden_states: torch.Tensor  # (B, S', D)
    attention_mask: torch.Tensor  # (B, S'), the input mask's dtype (long when none was given)
    positions: torch.Tensor  # (B, S') float: mean original position of each output token
    plan: MergePlan  # which input tokens each output token stands for (all rounds as one plan)


def _pairs(x: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """x (B, S, ...) -> (B, S', 2, ...): the first and last input token of every output token."""
    batch, seq = x.shape[:2]
    if seq != plan.mask_in_len:
        raise ValueError(f"the plan was made for {plan.mask_in_len} tokens, the input has {seq}")
    rows = x.reshape(batch * seq, *x.shape[2:]).index_select(0, plan.flat)  # index_select beats gather on CPU
    return rows.view(batch, plan.length, 2, *x.shape[2:])


def apply_plan(hidden_states: torch.Tensor, plan: MergePlan, method: str = "slerp") -> torch.Tensor:
    """(B, S, D) -> (B, S', D) for a plan of single tokens and pairs. A token left alone comes through bit for bit."""
    return methods.get(method).combine(_pairs(hidden_states, plan), 0.5)


def merge_positions(positions: torch.Tensor, plan: MergePlan, method: str = "slerp") -> torch.Tensor:
    """(B, S) original positions -> (B, S') float: the pair's mean, or the kept token's where the method keeps the
    later token."""
    pairs = _pairs(positions.to(torch.float32), plan)  # (B, S', 2)
    return pairs[..., 1].contiguous() if methods.get(method).combine is methods.combine.last else pairs.mean(-1)


def merge_sequence(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    keep_start: int = 0,
    keep_end: int = 0,
    method: str = "slerp",
    positions: torch.Tensor | None = None,
    similarity: float | None = None,
    ratio: float | None = None,
    *,
    scores: torch.Tensor | None = None,
    target: float | None = None,
    protect: float | None = None,
    chunk: int | None = None,
    word_starts: torch.Tensor | None = None,
) -> Merged:
    """Shorten ``hidden_states`` (B, S, D) by ``method`` (see `slerpmerge.methods`; the article's by default).

    attention_mask (B, S): 1 for real tokens, padding on either side. positions (B, S): the tokens' original
    positions, by default their index among the row's real tokens. ``similarity`` / ``ratio``: merge only the
    pairs whose cosine reaches the threshold, or that fraction of them, the most similar first. ``scores`` (B, S):
    the importance of each token, for the scored methods, which keep ``target`` of each row's tokens, ``protect``
    of those exact, ranking whole runs of ``chunk`` tokens (ending also at ``word_starts`` (B, S) bool, the tokens
    that begin a word, where given). Rows may come out of different lengths: the output is
    then padded on the input's side (left when there was no padding).
    """
    m = methods.get(method)
    options = check_options(method, dict(similarity=similarity, ratio=ratio, target=target, protect=protect,
                                         chunk=chunk))
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq, dim), got shape {tuple(hidden_states.shape)}")
    if m.scored and (scores is None or scores.shape != hidden_states.shape[:2]):
        raise ValueError(f"method {method!r} needs one score per token, (batch, seq), as `scores`")
    if word_starts is not None and not m.scored:
        raise ValueError(f"word_starts shape the runs of a scored method's ranking; {method!r} ranks nothing")
    batch, seq, _ = hidden_states.shape
    device = hidden_states.device
    # Output rows can differ in length (and so hold padding) when the input is padded or the plan reads values.
    padded = attention_mask is not None or m.scored or similarity is not None or ratio is not None
    if not padded:  # the article's plan depends on lengths alone: made once per shape
        rounds = [unpadded_plan(batch, seq, keep_start, keep_end, device)]
        mask = None
    else:
        mask = torch.ones(batch, seq, dtype=torch.long, device=device) if attention_mask is None else attention_mask
        if mask.shape != (batch, seq):
            raise ValueError(f"attention_mask must be (batch, seq) = {(batch, seq)}, got {tuple(mask.shape)}")
        if word_starts is not None and word_starts.shape != (batch, seq):
            raise ValueError(f"word_starts must be (batch, seq) = {(batch, seq)}, got {tuple(word_starts.shape)}")
        rounds = m.group(methods.Tokens(mask.bool(), hidden_states, scores, keep_start, keep_end, options,
                                        word_starts))
    if positions is None:
        positions = (mask.long().cumsum(1) - 1).clamp(min=0) if padded else torch.arange(seq, device=device)[None]
    positions = positions.expand(batch, seq).to(torch.float32)
    hidden, counts = hidden_states, None  # counts (B, S_r): input tokens each token of round r stands for
    overall = None
    for plan in rounds:
        hidden, positions, counts = _combine(m, plan, hidden, positions, counts)
        overall = plan if overall is None else overall.then(plan)
    if overall is None:  # nothing to merge: rows already at their target length
        overall = identity_plan(mask)
    if padded:
        positions = torch.where(overall.mask, positions, 0.0)
    return Merged(hidden_states=hidden, positions=positions, plan=overall,
                  attention_mask=overall.mask.to(mask.dtype if padded else torch.long))


def _combine(m: methods.Method, plan: MergePlan, hidden: torch.Tensor, positions: torch.Tensor,
             counts: torch.Tensor | None):
    """One round: each output token from the two ends of its span, weighted by the tokens each stands for."""
    pos = _pairs(positions, plan)  # (B, S', 2)
    if counts is None:  # the first round: every token stands for itself, t = 0.5
        t, new_counts = 0.5, 1 + (plan.last != plan.first).long()
        merged_pos = pos.mean(-1)
    else:
        c = _pairs(counts, plan)  # (B, S', 2)
        single = plan.first == plan.last
        new_counts = torch.where(single, c[..., 0], c.sum(-1))
        t = torch.where(single, 0.5, c[..., 1] / new_counts)[..., None]  # (B, S', 1)
        merged_pos = torch.lerp(pos[..., 0], pos[..., 1], t[..., 0])
    if m.combine is methods.combine.last:
        merged_pos = pos[..., 1].contiguous()
    return m.combine(_pairs(hidden, plan), t), merged_pos, new_counts


@functools.lru_cache(maxsize=4096)
def merged_length(length: int, settings) -> int:
    """How many tokens a row of ``length`` real tokens leaves after every cutoff of ``settings`` (a `MergeSettings`).

    An engine that lays out its caches before the forward runs needs this from the length alone; it holds for
    every method whose plan counts tokens rather than reading their values (all but ``similarity`` pairs), and
    the caller checks the merge against it. Found by planning a row of zero vectors with the methods' own plans.
    """
    if settings.similarity is not None:
        raise ValueError("similarity pairs merge as many tokens as are similar: the length is not known in advance")
    for _ in settings.cutoffs:
        if length == 0:
            break
        zeros = torch.zeros(1, length)
        length = merge_sequence(zeros[..., None], torch.ones(1, length, dtype=torch.long), settings.keep_start,
                                settings.keep_end, settings.method, ratio=settings.ratio,
                                scores=zeros if methods.get(settings.method).scored else None,
                                target=settings.target, protect=settings.protect).plan.length
    return length
