"""Merge plans: which input tokens make each output token.

Planning is integer work on the padding mask (and, for the scored rules, on one score per token), vectorised over
rows and tokens, so a padded batch costs one plan and each row comes out exactly as if it had been planned alone.
Every output token is a contiguous span first..last of input tokens (first == last: a token kept as it is); an
input token no span covers is dropped. The merged sequence is padded on the input's side (left when unpadded).

Three ways of grouping tokens, each a function from (mask, scores, settings) to a list of rounds:
    pairs    the article's: consecutive pairs between the kept ends, optionally only the most similar
    rounds   the tokens that score highest stay as they are; the others merge with their neighbours, pair by pair,
             round after round, until the row is down to its target length
    select   the tokens that score highest stay; the others are dropped
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MergePlan:
    first: torch.Tensor  # (B, S') long: index of the first input token of each output token
    last: torch.Tensor  # (B, S') long: index of its last input token (== first for a token kept alone)
    mask: torch.Tensor  # (B, S') bool: real output tokens; padding sits on the input's side
    mask_in_len: int  # S, the input length the indices point into

    @property
    def length(self) -> int:
        return self.first.shape[1]

    @functools.cached_property
    def flat(self) -> torch.Tensor:
        """(B·S'·2,) first and last of each output token, interleaved, as rows of a flattened (B·S, ...) input:
        one index_select gathers both ends of every span."""
        batch, seq = self.first.shape[0], self.mask_in_len
        offset = torch.arange(batch, device=self.first.device)[:, None, None] * seq
        return (torch.stack([self.first, self.last], -1) + offset).reshape(-1)

    def then(self, inner: "MergePlan") -> "MergePlan":
        """This plan followed by ``inner`` (a plan over this one's output), as one plan over this one's input."""
        return MergePlan(self.first.gather(1, inner.first), self.last.gather(1, inner.last), inner.mask,
                         self.mask_in_len)


def check_keeps(keep_start: int, keep_end: int) -> None:
    for name, value in (("keep_start", keep_start), ("keep_end", keep_end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def padding_side(mask: torch.Tensor) -> str:
    """'left' or 'right' for a (B, S) bool mask whose real tokens are contiguous in every row; else ValueError."""
    n = mask.sum(1)
    idx = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(mask, idx, mask.shape[1]).amin(1)
    last = torch.where(mask, idx, -1).amax(1)
    nonempty = n > 0
    if not bool(((last - first + 1 == n) | ~nonempty).all()):
        raise ValueError("attention_mask: the real tokens of each row must be contiguous (left or right padding)")
    if bool((mask[:, -1] | ~nonempty).all()):
        return "left"
    if bool((mask[:, 0] | ~nonempty).all()):
        return "right"
    raise ValueError("attention_mask: every row must be padded on the same side (all left or all right)")


def _middle(mask: torch.Tensor, keep_start: int, keep_end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: its index k inside the row's middle segment (between the kept ends), and per row (B, 1) the
    segment's length m and the number of tokens kept at the ends."""
    check_keeps(keep_start, keep_end)
    rank = mask.long().cumsum(1) - 1  # index among the row's real tokens
    n = mask.sum(1, keepdim=True)
    ks = n.clamp(max=keep_start)
    ke = (n - ks).clamp(max=keep_end)
    return rank - ks, n - ks - ke, ks + ke


# -- pairs ------------------------------------------------------------------------------------------------------

def pair_consecutive(mask: torch.Tensor, keep_start: int = 0, keep_end: int = 0) -> torch.Tensor:
    """The article's pairing as a (B, S) bool: True where a real token joins the real token before it.

    Of the n real tokens of a row, the first keep_start and last keep_end stay alone; the m in between are
    framed by a null at each end (and one more before the last token when m + 2 is odd) and cut into pairs, so
    the first and last middle tokens stay alone and a middle of fewer than 3 tokens is left as it is.
    """
    k, m, _ = _middle(mask, keep_start, keep_end)
    in_middle = mask & (k >= 0) & (k < m)
    last_of_odd = (k == m - 1) & (m % 2 == 1)  # the extra null sits just before it
    return in_middle & (m >= 3) & (k >= 2) & (k % 2 == 0) & ~last_of_odd


def pair_similar(joins: torch.Tensor, cosine: torch.Tensor, similarity: float | None = None,
                 ratio: float | None = None) -> torch.Tensor:
    """Of the pairs ``joins`` marks, only those whose cosine (B, S) with the token before reaches ``similarity``,
    or in each row the ``ratio`` most similar of them. Both None keeps every pair."""
    if similarity is None and ratio is None:
        return joins
    if similarity is not None:
        return joins & (cosine >= similarity)
    keep = torch.ceil(joins.sum(1, keepdim=True) * ratio).long()
    return joins & (_rank(torch.where(joins, cosine, -3.0)) < keep)


def plan_from_joins(mask: torch.Tensor, joins: torch.Tensor) -> MergePlan:
    """Turn 'joins the previous real token' flags (B, S) into a plan; any pairing rule feeds through here.

    A token may only join a real token that does not itself join its own predecessor (pairs, never triples).
    """
    mask = mask.bool()
    joins = joins & mask
    if bool((joins & (mask.long().cumsum(1) == 1)).any()):
        raise ValueError("a merge plan may only join adjacent real tokens, in pairs (the first has no predecessor)")
    plan = _plan_from_starts(mask, mask & ~joins)
    if bool(((plan.last - plan.first > 1) & plan.mask).any()):
        raise ValueError("a merge plan may only join adjacent real tokens, in pairs")
    return plan


def plan_merge(mask: torch.Tensor, keep_start: int = 0, keep_end: int = 0) -> MergePlan:
    """The article's plan for a (B, S) padding mask (bool or 0/1)."""
    mask = mask.bool()
    return plan_from_joins(mask, pair_consecutive(mask, keep_start, keep_end))


def identity_plan(mask: torch.Tensor) -> MergePlan:
    """Every real token alone."""
    mask = mask.bool()
    return _plan_from_starts(mask, mask)


@functools.lru_cache(maxsize=32)
def unpadded_plan(batch: int, seq: int, keep_start: int, keep_end: int, device: torch.device) -> MergePlan:
    """The article's plan for rows with no padding: it depends on lengths alone, so it is made once per shape."""
    return plan_merge(torch.ones(batch, seq, dtype=torch.bool, device=device), keep_start, keep_end)


# -- scored rules: keep the highest-scoring tokens, merge or drop the rest ----------------------------------------

def scored_keep_end(keep_end: int) -> int:
    """The scored rules keep at least a row's last token exact, whatever ``keep_end`` says: its output is the one
    that predicts the next token, and an engine reads the next token from it. (The pair rules keep it alone too.)"""
    check_keeps(0, keep_end)
    return max(keep_end, 1)


def target_lengths(mask: torch.Tensor, keep_start: int, keep_end: int, target: float) -> torch.Tensor:
    """(B, 1) tokens each row keeps: ceil(target · n) (in double precision: in float32 ceil(50 · 0.3) is 16), and at
    least its kept ends plus one token of the middle."""
    _, m, ends = _middle(mask, keep_start, keep_end)
    n = mask.sum(1, keepdim=True)
    return torch.maximum(torch.ceil(n.double() * target).long(), ends + m.clamp(max=1)).clamp(max=n)


def middle_ranks(mask: torch.Tensor, scores: torch.Tensor, keep_start: int, keep_end: int) -> torch.Tensor:
    """(B, S) rank of each middle token by score, 0 the highest (ties: the earlier token first); -1 for the kept
    ends and for padding, which always stay (padding is never planned)."""
    k, m, _ = _middle(mask, keep_start, keep_end)
    middle = mask & (k >= 0) & (k < m)
    rank = _rank(torch.where(middle, scores.float(), -math.inf))
    return torch.where(middle, rank, -1)


def chunk_scores(mask: torch.Tensor, scores: torch.Tensor, keep_start: int, keep_end: int,
                 chunk: int, word_starts: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S): each middle token's score raised to the best in its run, so that a plan keeps or loses a run whole.
    A value spelled in many tokens (a number a digit a token, a UUID) then comes through with all its pieces or
    none, instead of cut where the ranking falls. Runs are ``chunk`` tokens from the middle's start; with
    ``word_starts`` (B, S) bool, the tokens that begin a word, a run also ends where a word does, so that a word of up
    to ``chunk`` tokens is one run wherever it sits. Tied runs stay apart in the ranking (ties go to the earlier
    token): at most one run of a row is cut."""
    if chunk <= 1:
        return scores
    k, m, _ = _middle(mask, keep_start, keep_end)
    middle = mask & (k >= 0) & (k < m)
    seq = mask.shape[1]
    unit = torch.where(middle, _runs(k, middle, chunk, word_starts), seq)  # (B, S): run index, seq for the rest
    values = torch.where(middle, scores.float(), -math.inf)
    best = torch.full((mask.shape[0], seq + 1), -math.inf, device=mask.device)
    best = best.scatter_reduce(1, unit, values, "amax")
    return torch.where(middle, best.gather(1, unit), scores.float())


def _runs(k: torch.Tensor, middle: torch.Tensor, chunk: int, word_starts: torch.Tensor | None) -> torch.Tensor:
    """(B, S) the run index of each middle token (k: its index in the middle): a run begins at the middle's
    start, at a word's start, and every ``chunk`` tokens into a word."""
    if word_starts is None:
        return k.div(chunk, rounding_mode="floor")
    word = middle & (word_starts.bool() | (k == 0))  # (B, S): where a word begins inside the middle
    since = k - torch.where(word, k, -1).cummax(1).values  # (B, S): tokens since that word began
    begins = middle & (since % chunk == 0)
    return begins.long().cumsum(1) - 1


def plan_select(mask: torch.Tensor, scores: torch.Tensor, keep_start: int, keep_end: int,
                target: float, chunk: int = 1, word_starts: torch.Tensor | None = None) -> MergePlan:
    """Keep the kept ends and the highest-scoring middle tokens (or chunks of ``chunk`` tokens), ``target`` of each
    row in all; drop the rest."""
    mask, keep_end = mask.bool(), scored_keep_end(keep_end)
    side = padding_side(mask) if mask.shape[1] else "left"
    _, _, ends = _middle(mask, keep_start, keep_end)
    rank = middle_ranks(mask, chunk_scores(mask, scores, keep_start, keep_end, chunk, word_starts), keep_start,
                        keep_end)
    keep = mask & (rank < target_lengths(mask, keep_start, keep_end, target) - ends)
    return _plan_from_starts(keep, keep, side)


def protected_count(rank: torch.Tensor, budget: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """(B, 1) how many of the best-ranked middle tokens to keep exact: at most ``wanted``, and few enough that the
    stretches of unprotected tokens between them (each of which merges down to one token at least) still fit the
    row's ``budget`` of middle tokens.

    Protecting the k best leaves runs(k) stretches; a middle token j starts one exactly when the token before it is
    protected (ranks below k, or it is an end) and j is not, i.e. for k in (rank[j-1], rank[j]]. Summing those
    intervals gives runs(k) for every k at once."""
    batch, seq = rank.shape
    prev = torch.nn.functional.pad(rank, (1, 0), value=-1)[:, :-1]
    starts = (rank >= 0) & (prev < rank)
    diff = torch.zeros(batch, seq + 2, dtype=torch.long, device=rank.device)
    diff.scatter_add_(1, (prev + 1).clamp(min=0) * starts, starts.long())
    diff.scatter_add_(1, (rank + 1).clamp(min=0) * starts, -starts.long())
    runs = diff.cumsum(1)[:, :seq + 1]  # (B, S + 1): runs(k)
    k = torch.arange(seq + 1, device=rank.device)[None]
    fits = (k + runs <= budget) & (k <= wanted) & (k <= (rank >= 0).sum(1, keepdim=True))
    return torch.where(fits, k, 0).amax(1, keepdim=True)


def plan_rounds(mask: torch.Tensor, scores: torch.Tensor, keep_start: int, keep_end: int, target: float,
                protect: float, chunk: int = 1, word_starts: torch.Tensor | None = None) -> list[MergePlan]:
    """Keep the kept ends and the best-scoring ``protect`` share of the rest of each row's budget exact (ranked by
    chunks of ``chunk`` tokens); merge the other tokens with their neighbours, pair by pair, in rounds, until each
    row is down to ``target`` of its tokens. A round pairs the consecutive merged units of every unprotected
    stretch; the last round merges only the pairs it needs, those with the lowest summed score first. Returns the
    rounds' plans."""
    mask, keep_end = mask.bool(), scored_keep_end(keep_end)
    scores = chunk_scores(mask, scores, keep_start, keep_end, chunk, word_starts)
    rank = middle_ranks(mask, scores, keep_start, keep_end)
    _, _, ends = _middle(mask, keep_start, keep_end)
    length = target_lengths(mask, keep_start, keep_end, target)
    budget = length - ends
    wanted = torch.floor(budget * protect + 0.5).long()
    protected = mask & (rank < protected_count(rank, budget, wanted))
    priority = torch.where(mask, scores.float(), 0.0)
    rounds = []
    while True:
        excess = (mask.sum(1, keepdim=True) - length).clamp(min=0)  # (B, 1) merges still needed
        joins = _round_joins(mask, protected, priority, excess)
        if not bool(joins.any()):
            return rounds
        plan = plan_from_joins(mask, joins)
        rounds.append(plan)
        mask = plan.mask
        protected = protected.gather(1, plan.first) & mask
        priority = priority.gather(1, plan.first) + torch.where(plan.last != plan.first,
                                                                priority.gather(1, plan.last), 0.0)


def _round_joins(mask: torch.Tensor, protected: torch.Tensor, priority: torch.Tensor,
                 excess: torch.Tensor) -> torch.Tensor:
    """One round: the odd units of every stretch of unprotected real units join the unit before, at most
    ``excess`` (B, 1) per row, the pairs of lowest summed priority first."""
    free = mask & ~protected
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    prev_free = torch.nn.functional.pad(free, (1, 0))[:, :-1]
    start = torch.where(free & ~prev_free, idx, -1).cummax(1).values
    joins = free & ((idx - start) % 2 == 1)
    pair_priority = priority + torch.nn.functional.pad(priority, (1, 0))[:, :-1]
    return joins & (_rank(torch.where(joins, -pair_priority, -math.inf)) < excess)


# -- shared -------------------------------------------------------------------------------------------------------

def _rank(values: torch.Tensor) -> torch.Tensor:
    """(B, S) rank of each value within its row, 0 for the largest; ties go to the earlier token."""
    order = values.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    return rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))


def _plan_from_starts(mask: torch.Tensor, starts: torch.Tensor, side: str | None = None) -> MergePlan:
    """A plan whose output tokens are the spans that begin at ``starts`` and run over the following ``mask``
    tokens up to the next start; tokens outside ``mask`` are dropped."""
    batch, seq = mask.shape
    if side is None:
        side = padding_side(mask) if seq else "left"
    slot = starts.long().cumsum(1) - 1  # (B, S): output index of each kept token, within its row
    n_out = starts.sum(1)  # (B,)
    out_len = int(n_out.max()) if batch and seq else 0
    if side == "left":
        slot = slot + (out_len - n_out)[:, None]
    slot = torch.where(mask, slot, out_len)  # dropped and padding tokens go to a spare column, cut below

    idx = torch.arange(seq, device=mask.device).expand(batch, seq)
    first = torch.full((batch, out_len + 1), seq, dtype=torch.long, device=mask.device)
    last = torch.full((batch, out_len + 1), -1, dtype=torch.long, device=mask.device)
    first = first.scatter_reduce(1, slot, idx, "amin")[:, :out_len]
    last = last.scatter_reduce(1, slot, idx, "amax")[:, :out_len]
    out_mask = last >= 0
    first = torch.where(out_mask, first, 0)
    last = torch.where(out_mask, last, 0)
    return MergePlan(first=first, last=last, mask=out_mask, mask_in_len=seq)
