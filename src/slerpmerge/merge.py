"""The merge plan (which tokens pair up) and its application to hidden states and positions.

A plan is integer work on the padding mask alone: for every output token it names the first and last input token
it is made of (the same index when a token stays alone). Building it is vectorised over rows and tokens, so a
padded batch costs one plan, and each row comes out exactly as if it had been merged alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .slerp import slerp_pairs

METHODS = ("slerp", "mean", "drop")


@dataclass(frozen=True)
class MergePlan:
    first: torch.Tensor  # (B, S') long: index of the first input token of each output token
    last: torch.Tensor  # (B, S') long: index of the second one (== first for a token left alone)
    mask: torch.Tensor  # (B, S') bool: real output tokens; padding sits on the input's side
    mask_in_len: int  # S, the input length the indices point into

    @property
    def length(self) -> int:
        return self.first.shape[1]

    @functools.cached_property
    def flat(self) -> torch.Tensor:
        """(B·S'·2,) first and last of each output token, interleaved, as rows of a flattened (B·S, ...) input:
        one index_select gathers both halves of every pair."""
        batch, seq = self.first.shape[0], self.mask_in_len
        offset = torch.arange(batch, device=self.first.device)[:, None, None] * seq
        return (torch.stack([self.first, self.last], -1) + offset).reshape(-1)


@dataclass(frozen=True)
class Merged:
    hidden_states: torch.Tensor  # (B, S', D)
    attention_mask: torch.Tensor  # (B, S'), the input mask's dtype (long when none was given)
    positions: torch.Tensor  # (B, S') float: mean original position of each output token
    plan: MergePlan


def check_keeps(keep_start: int, keep_end: int) -> None:
    for name, value in (("keep_start", keep_start), ("keep_end", keep_end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def check_similarity(similarity: float | None, ratio: float | None) -> None:
    if similarity is not None and ratio is not None:
        raise ValueError("give similarity (a cosine threshold) or ratio (a fraction of pairs), not both")
    if similarity is not None and not -1.0 <= similarity <= 1.0:
        raise ValueError(f"similarity is a cosine threshold in [-1, 1], got {similarity!r}")
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio is the fraction of pairs to merge, in [0, 1], got {ratio!r}")


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


def pair_consecutive(mask: torch.Tensor, keep_start: int = 0, keep_end: int = 0) -> torch.Tensor:
    """The article's pairing as a (B, S) bool: True where a real token joins the real token before it.

    Of the n real tokens of a row, the first keep_start and last keep_end stay alone; the m in between are
    framed by a null at each end (and one more before the last token when m + 2 is odd) and cut into pairs, so
    the first and last middle tokens stay alone and a middle of fewer than 3 tokens is left as it is.
    """
    check_keeps(keep_start, keep_end)
    rank = mask.long().cumsum(1) - 1  # index among the row's real tokens
    n = mask.sum(1, keepdim=True)
    ks = n.clamp(max=keep_start)
    ke = (n - ks).clamp(max=keep_end)
    m = n - ks - ke
    k = rank - ks  # index inside the middle segment
    in_middle = mask & (k >= 0) & (k < m)
    last_of_odd = (k == m - 1) & (m % 2 == 1)  # the extra null sits just before it
    return in_middle & (m >= 3) & (k >= 2) & (k % 2 == 0) & ~last_of_odd


def pair_similar(hidden_states: torch.Tensor, mask: torch.Tensor, keep_start: int = 0, keep_end: int = 0,
                 similarity: float | None = None, ratio: float | None = None) -> torch.Tensor:
    """The article's pairs, of which only similar ones merge: cosine >= `similarity`, or in each row the `ratio`
    most similar of them. Distinct neighbours stay apart; both None keeps every pair."""
    joins = pair_consecutive(mask, keep_start, keep_end)
    if similarity is None and ratio is None:
        return joins
    h = hidden_states.float()
    cur, prev = h[:, 1:], h[:, :-1]  # views: token i beside token i - 1
    dot = torch.einsum("bsd,bsd->bs", cur, prev)
    norms = torch.linalg.vector_norm(cur, dim=-1) * torch.linalg.vector_norm(prev, dim=-1)
    sim = torch.nn.functional.pad(dot / norms.clamp_min(1e-30), (1, 0), value=-2.0)  # (B, S); zero vectors: 0
    if similarity is not None:
        return joins & (sim >= similarity)
    score = torch.where(joins, sim, -3.0)
    order = score.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    keep = torch.ceil(joins.sum(1, keepdim=True) * ratio).long()
    return joins & (rank < keep)


def plan_from_joins(mask: torch.Tensor, joins: torch.Tensor) -> MergePlan:
    """Turn 'joins the previous real token' flags (B, S) into a plan; any pairing rule feeds through here.

    A token may only join a real token that does not itself join its own predecessor (pairs, never triples).
    """
    mask = mask.bool()
    joins = joins & mask
    batch, seq = mask.shape
    side = padding_side(mask) if seq else "left"
    if bool((joins & (mask.long().cumsum(1) == 1)).any()):
        raise ValueError("a merge plan may only join adjacent real tokens, in pairs (the first has no predecessor)")
    starts = mask & ~joins
    slot = starts.long().cumsum(1) - 1  # (B, S): output index of each real token, within its row
    n_out = starts.sum(1)  # (B,)
    out_len = int(n_out.max()) if batch and seq else 0
    if side == "left":
        slot = slot + (out_len - n_out)[:, None]
    slot = torch.where(mask, slot, out_len)  # padding goes to a spare column, dropped below

    idx = torch.arange(seq, device=mask.device).expand(batch, seq)
    first = torch.full((batch, out_len + 1), seq, dtype=torch.long, device=mask.device)
    last = torch.full((batch, out_len + 1), -1, dtype=torch.long, device=mask.device)
    first = first.scatter_reduce(1, slot, idx, "amin")[:, :out_len]
    last = last.scatter_reduce(1, slot, idx, "amax")[:, :out_len]
    out_mask = last >= 0
    if bool(((last - first > 1) & out_mask).any()):
        raise ValueError("a merge plan may only join adjacent real tokens, in pairs")
    first = torch.where(out_mask, first, 0)
    last = torch.where(out_mask, last, 0)
    return MergePlan(first=first, last=last, mask=out_mask, mask_in_len=seq)


def plan_merge(mask: torch.Tensor, keep_start: int = 0, keep_end: int = 0) -> MergePlan:
    """The article's plan for a (B, S) padding mask (bool or 0/1)."""
    mask = mask.bool()
    return plan_from_joins(mask, pair_consecutive(mask, keep_start, keep_end))


def _pairs(x: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """x (B, S, ...) -> (B, S', 2, ...): the first and last input token of every output token."""
    batch, seq = x.shape[:2]
    if seq != plan.mask_in_len:
        raise ValueError(f"the plan was made for {plan.mask_in_len} tokens, the input has {seq}")
    rows = x.reshape(batch * seq, *x.shape[2:]).index_select(0, plan.flat)  # index_select beats gather on CPU
    return rows.view(batch, plan.length, 2, *x.shape[2:])


def apply_plan(hidden_states: torch.Tensor, plan: MergePlan, method: str = "slerp") -> torch.Tensor:
    """(B, S, D) -> (B, S', D). A token left alone comes through bit for bit (x merged with itself is x)."""
    check_method(method)
    pairs = _pairs(hidden_states, plan)  # (B, S', 2, D)
    a, b = pairs.unbind(2)
    if method == "drop":  # keep the later token: it has seen the most context
        return b.contiguous()
    if method == "mean":
        return a.mul(0.5).add_(b, alpha=0.5)  # halves first: no overflow near the dtype's range
    return slerp_pairs(pairs, 0.5)


def merge_positions(positions: torch.Tensor, plan: MergePlan, method: str = "slerp") -> torch.Tensor:
    """(B, S) original positions -> (B, S') float: the pair's mean, or the kept token's under 'drop'."""
    pairs = _pairs(positions.to(torch.float32), plan)  # (B, S', 2)
    return pairs[..., 1].contiguous() if method == "drop" else pairs.mean(-1)


@functools.lru_cache(maxsize=32)
def _unpadded_plan(batch: int, seq: int, keep_start: int, keep_end: int, device: torch.device) -> MergePlan:
    return plan_merge(torch.ones(batch, seq, dtype=torch.bool, device=device), keep_start, keep_end)


def merge_sequence(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    keep_start: int = 0,
    keep_end: int = 0,
    method: str = "slerp",
    positions: torch.Tensor | None = None,
    similarity: float | None = None,
    ratio: float | None = None,
) -> Merged:
    """Merge consecutive token pairs of ``hidden_states`` (B, S, D) as the article describes.

    attention_mask (B, S): 1 for real tokens, padding on either side. positions (B, S): the tokens' original
    positions, by default their index among the row's real tokens. ``similarity`` / ``ratio``: merge only the
    pairs whose cosine reaches the threshold, or that fraction of them, the most similar first (rows may then
    differ in length: the output is padded on the input's side, left when there was no padding).
    """
    check_method(method)
    check_similarity(similarity, ratio)
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq, dim), got shape {tuple(hidden_states.shape)}")
    batch, seq, _ = hidden_states.shape
    device = hidden_states.device
    padded = attention_mask is not None or similarity is not None or ratio is not None  # output may hold padding
    if not padded:  # the plan depends on lengths alone: build it once per shape
        plan = _unpadded_plan(batch, seq, keep_start, keep_end, device)
    else:
        mask = torch.ones(batch, seq, dtype=torch.long, device=device) if attention_mask is None else attention_mask
        if mask.shape != (batch, seq):
            raise ValueError(f"attention_mask must be (batch, seq) = {(batch, seq)}, got {tuple(mask.shape)}")
        real = mask.bool()
        plan = plan_from_joins(real, pair_similar(hidden_states, real, keep_start, keep_end, similarity, ratio))
    if positions is None:
        positions = (mask.long().cumsum(1) - 1).clamp(min=0) if padded else torch.arange(seq, device=device)[None]
    merged_positions = merge_positions(positions.expand(batch, seq), plan, method)
    if padded:
        merged_positions = torch.where(plan.mask, merged_positions, 0.0)
    return Merged(
        hidden_states=apply_plan(hidden_states, plan, method),
        attention_mask=plan.mask.to(mask.dtype if padded else torch.long),
        positions=merged_positions,
        plan=plan,
    )
