"""Every way slerpmerge shortens a sequence, in one table: how tokens are scored, how they are grouped (which stay
exact, which merge, which go) and how a group becomes one vector. `patch`'s validation, the CLI's choices, `eval`'s
method list and `tune`'s candidates all read this table; a new method is a new row (and its tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import combine, plan
from .plan import MergePlan


@dataclass(frozen=True)
class Tokens:
    """What a grouping rule plans from: a sequence's padding mask, and what it asks for of the rest."""

    mask: torch.Tensor  # (B, S) bool
    hidden_states: torch.Tensor  # (B, S, D)
    scores: torch.Tensor | None  # (B, S) importance at the cutoff, for scored methods
    keep_start: int
    keep_end: int
    options: dict  # the method's own settings (similarity, ratio, target, protect, chunk)
    word_starts: torch.Tensor | None = None  # (B, S) bool: the tokens that begin a word, for runs by words


def pairs(tokens: Tokens) -> list[MergePlan]:
    """The article's consecutive pairs, or only the similar ones."""
    o = tokens.options
    joins = plan.pair_consecutive(tokens.mask, tokens.keep_start, tokens.keep_end)
    if o.get("similarity") is not None or o.get("ratio") is not None:
        from .score import neighbour_cosine

        joins = plan.pair_similar(joins, neighbour_cosine(tokens.hidden_states), o.get("similarity"), o.get("ratio"))
    return [plan.plan_from_joins(tokens.mask, joins)]


def rounds(tokens: Tokens) -> list[MergePlan]:
    o = tokens.options
    return plan.plan_rounds(tokens.mask, tokens.scores, tokens.keep_start, tokens.keep_end, o["target"],
                            o["protect"], o["chunk"], tokens.word_starts)


def select(tokens: Tokens) -> list[MergePlan]:
    return [plan.plan_select(tokens.mask, tokens.scores, tokens.keep_start, tokens.keep_end,
                             tokens.options["target"], tokens.options["chunk"], tokens.word_starts)]


@dataclass(frozen=True)
class Method:
    name: str
    group: Callable[[Tokens], list[MergePlan]]
    combine: Callable  # (pairs (B, S', 2, D), t) -> (B, S', D)
    scored: bool  # needs the attention score at the cutoff
    options: dict  # the settings it reads, with their defaults
    doc: str
    tune: tuple[dict, ...] = ({},)  # the option values `tune` tries, at every cutoff and recent window


PAIR_OPTIONS = {"similarity": None, "ratio": None}
SCORED_OPTIONS = {"target": 0.5, "score": "last", "score_layer": None, "mix": None, "window": None, "heads": None,
                  "spread": 0, "chunk": 1, "words": False}

METHODS = {m.name: m for m in (
    Method("slerp", pairs, combine.slerp, False, PAIR_OPTIONS,
           "consecutive pairs, each SLERPed at t = 0.5 (the article)", ({}, {"ratio": 0.5})),
    Method("mean", pairs, combine.mean, False, PAIR_OPTIONS, "consecutive pairs, each averaged", ()),
    Method("drop", pairs, combine.last, False, PAIR_OPTIONS, "consecutive pairs, each the later token"),
    Method("guided", rounds, combine.slerp, True, {**SCORED_OPTIONS, "protect": 0.5},
           "the tokens the last queries attend to most stay exact; the others merge with their neighbours by "
           "SLERP, in rounds, down to `target` of the tokens",
           tuple({"target": t, "protect": p} for t in (0.1, 0.25, 0.5) for p in (0.5, 0.9))),
    Method("guided-mean", rounds, combine.mean, True, {**SCORED_OPTIONS, "protect": 0.5},
           "as guided, averaging instead of SLERP", ()),
    Method("prune", select, combine.last, True, SCORED_OPTIONS,
           "the tokens the last queries attend to most stay, down to `target` of the tokens; the others are "
           "dropped (FastV / FastKV)", tuple({"target": t} for t in (0.1, 0.25, 0.5))),
)}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]
