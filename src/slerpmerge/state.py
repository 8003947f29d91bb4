"""What the transformers hooks carry: per stage (fixed at patching), per decoder call, and per prompt (what a
prefill leaves for the decode steps that continue it). Records only; `prefill`, `decode` and `layer_inputs` fill
them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache


@dataclass
class Stage:
    """One merge point: its cutoff and the layers it feeds, up to the next cutoff."""

    cutoff: int
    layers: dict  # layer index -> layer type, for every layer the stage feeds
    mask_layer: dict  # layer type -> the first of its layers of that type: the cache its masks are sized on


def stages(types: list[str], cutoffs: list[int], n_layers: int) -> list[Stage]:
    """One stage per cutoff, from each layer's type (``types``, n_layers of them)."""
    bounds = [*cutoffs, n_layers - 1]
    out = []
    for k, cutoff in enumerate(cutoffs):
        layers = {i: types[i] for i in range(cutoff + 1, bounds[k + 1] + 1)}
        mask_layer = {}
        for i, kind in layers.items():
            mask_layer.setdefault(kind, i)
        out.append(Stage(cutoff, layers, mask_layer))
    return out


@dataclass
class Record:
    """What a stage's prefill leaves for the decode steps that continue it."""

    mask: torch.Tensor | None  # (B, S_k) bool: real tokens of the merged prompt; None when no row is padded
    length: int  # S_k, the merged prompt's length: what the stage's caches hold of the prompt
    shift: torch.Tensor | int  # (B, 1): true position - position the stage's layers see ("reindex"), else 0
    positions: torch.Tensor  # (B, S_k) float: each entry's true (mean) position


@dataclass
class Prompt:
    """The last prefill, kept for its decode steps: the cache it filled and what each stage made of the prompt."""

    stages: list[Record] = field(default_factory=list)  # per stage, appended as the prefill passes each cutoff
    cache: weakref.ref | None = None  # a weak reference to the cache it filled
    length: int = 0  # S, the prompt's length before any merge
    right_padded: bool = False
    since: int = 0  # tokens fed since the prompt (counted: a compressed cache would under-count them)

    def continued_by(self, cache) -> bool:
        """Whether ``cache`` is the one this prefill filled (or a copy `resume` took on)."""
        return cache is not None and self.cache is not None and self.cache() is cache


@dataclass
class Kept:
    """A context read up to the cutoff (`Merger.read`), for questions to choose their own tokens from."""

    hidden: torch.Tensor  # (B, S, D): the cutoff's output for every context token
    mask: torch.Tensor | None  # (B, S) bool real tokens, or None when no row is padded
    positions: torch.Tensor  # (B, S): the tokens' true positions
    keys: dict  # score layer -> (B, H_kv, S, d) its keys, where its (sliding) cache does not hold them all
    held: tuple  # entries each layer's cache held after the read (`held`): a press that changes one is caught
    word_starts: torch.Tensor | None = None  # (B, S) bool: the context's tokens that begin a word (`words`)


@dataclass
class Forward:
    """One call of the decoder, from its pre-hook to its forward hook."""

    pad_mask: torch.Tensor | None  # (B, past + q) 2D padding mask as given, or None
    past: int  # tokens the cache held before this call: 0 for a prefill
    queries: int  # q, the tokens this call adds
    # Filled as the call goes through the cutoffs:
    cache: DynamicCache | None = None  # the cache the layers receive (the decoder makes one when given none)
    positions: torch.Tensor | None = None  # (B, q) true positions of this call's tokens (prefill: of the sequence
    # as the next cutoff receives it, i.e. merged means after each stage)
    mask: torch.Tensor | None = None  # prefill: (B, S_k) padding mask of that sequence, or None
    reselect: bool = False  # a question continuing a kept context: the first cutoff chooses its tokens
    word_starts: torch.Tensor | None = None  # (B, q) bool: this call's tokens that begin a word (`words`)


def held(cache: DynamicCache) -> tuple[int, ...]:
    """The entries each layer's cache holds (0 for a layer not yet written)."""
    return tuple(layer.keys.shape[-2] if layer.is_initialized else 0 for layer in cache.layers)
