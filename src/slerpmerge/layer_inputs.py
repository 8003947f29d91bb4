"""What a stage's layers are given in one call: rotary embeddings and masks built with the model's own rotary
module and mask functions, once per layer type, and a sliding layer's mask narrowed to true positions; the later
layers' pre-hooks that swap them in.

Functions of the `Merger` ``m`` (they read ``m.inputs[k]`` and ``m.call``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .rules import within_window


@dataclass
class LayerInputs:
    """What a stage's layers are given in one call, built once per layer type on first need."""

    hidden: torch.Tensor  # (B, q_k, D): the stage's input, for the mask's batch size and dtype
    positions: torch.Tensor  # (B, q_k): positions its layers see
    kv_mask: torch.Tensor | None | Callable  # (B, kv) real keys of its cache, or a function that makes it
    query_start: int  # where this call's tokens sit in the stage's cache
    reuse: bool  # a decode step whose layers keep the decoder's own mask and rotary where its mask is None
    entries: torch.Tensor | None  # (B, n) true position of every entry of the stage's cache, this call's last: for
    # its sliding layers, where a window in entries would span more text than the model's; else None
    built: dict = field(default_factory=dict)  # layer type -> kwargs for its layers


def later_hook(m, k: int, layer_type: str):
    """The pre-hook of stage k's layers of ``layer_type``: swap in what they are given, built on first need."""

    def hook(module, args, kwargs):
        inputs = m.inputs[k]
        own = inputs.built.get(layer_type)
        if own is None:
            # A decoder mask of None means no padding and nothing hidden from a one-token query: true of the
            # shorter merged cache as well, and with no position shift the decoder's rotary fits too.
            if inputs.reuse and kwargs.get("attention_mask") is None:
                return None
            own = inputs.built[layer_type] = layer_kwargs(m, k, layer_type)
        kwargs.update(own)
        if "cache_position" in kwargs:  # releases before 5.5 pass each layer its queries' cache positions
            q = inputs.hidden.shape[1]
            kwargs["cache_position"] = torch.arange(inputs.query_start, inputs.query_start + q,
                                                    device=inputs.hidden.device)
        return args, kwargs

    return hook


def slides(m, k: int, tokens: int) -> bool:
    """Whether stage k's sliding layers can meet a key further than their window from a query, in a call whose
    tokens reach ``tokens`` into the sequence (merged entries are then fewer than the window's tokens)."""
    window = getattr(m.config, "sliding_window", None)
    return bool(window) and tokens > window and "sliding_attention" in m.stages[k].mask_layer


def layer_kwargs(m, k: int, layer_type: str) -> dict:
    """Rotary embeddings and mask for a stage's layers of one type, from the model's own modules."""
    inputs = m.inputs[k]
    if callable(inputs.kv_mask):  # a decode step's, made on first need
        inputs.kv_mask = inputs.kv_mask()
    hidden, positions = inputs.hidden, inputs.positions
    layer = m.stages[k].mask_layer[layer_type]
    held = m.call.cache.get_seq_length(layer) if m.call.past else inputs.query_start
    if held != inputs.query_start:  # something (a KV-cache compression such as a kvpress press) changed it
        if inputs.kv_mask is not None:
            raise ValueError(
                f"layer {layer}'s cache holds {held} entries where the merged prefill and the steps since left "
                f"{inputs.query_start}: a KV-cache compression changed it, and which of the entries left are "
                "padding is unknown. Continue such a cache on unpadded rows only")
        inputs.query_start = held  # an unpadded row sees every entry left, and its new tokens causally
        inputs.entries = None  # which entries it left is unknown: the model's own window, in entries
    mask = m.api.mask(layer_type, m.config, hidden, inputs.kv_mask, m.call.cache, layer, inputs.query_start)
    if layer_type == "sliding_attention" and inputs.entries is not None:
        mask = _narrow(m, mask, inputs.entries, layer, hidden.shape[1])
    rotary = m.decoder.rotary_emb
    if m.rotary_per_type:
        embeddings = rotary(hidden, positions, layer_type)
    else:
        shared = next((b["position_embeddings"] for b in inputs.built.values()), None)
        embeddings = shared if shared is not None else rotary(hidden, positions)
    return dict(attention_mask=mask, position_embeddings=embeddings, position_ids=positions)


def _narrow(m, mask: torch.Tensor | None, entries: torch.Tensor, layer: int, q: int) -> torch.Tensor:
    """A sliding layer's mask (B, 1, q, kv) narrowed to the keys whose true position is within the window of the
    query's; ``entries`` (B, n), the stage's every entry, this call's last. The layer attends to the last kv
    entries: those its cache holds (a sliding cache keeps its last W - 1) and this call's."""
    if mask is None:  # SDPA's causal: every held entry, and this call's causally
        cache = m.call.cache
        held = cache.layers[layer] if cache is not None and len(cache.layers) > layer else None
        before = held.keys.shape[-2] if held is not None and held.is_initialized else 0
        kv = before + q
        mask = torch.ones(q, kv, dtype=torch.bool, device=entries.device).tril_(before)[None, None]
    keys = entries[:, -mask.shape[-1]:]  # (B, kv)
    near = within_window(entries[:, -q:], keys, m.config.sliding_window)[:, None]  # (B, 1, q, kv)
    if mask.dtype == torch.bool:
        return mask & near
    return mask.masked_fill(~near, torch.finfo(mask.dtype).min)  # eager's additive mask
