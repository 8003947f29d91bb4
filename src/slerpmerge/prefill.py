"""A prefill at each cutoff: merge the stage's input (B, S, D) -> (B, S', D) and say what its layers see. A context
read up to the cutoff (`keep`) and a question that chooses its tokens from it (`reselect`) are prefills too.

Functions of the `Merger` ``m`` whose cutoff hooks call them: they read the call under way (``m.call``) and leave
``m.prompt`` for the decode steps."""

from __future__ import annotations

import weakref

import torch

from .layer_inputs import LayerInputs, layer_kwargs, slides
from .merge import merge_sequence
from .state import Kept, Prompt, Record, held


def merge(m, k: int, hidden: torch.Tensor) -> torch.Tensor:
    """Stage k's prefill: merge the cutoff's output as the settings say."""
    call, s = m.call, m.settings
    if k == 0:
        start(m, hidden)
    scores = m.scorings[k].importance(call.mask) if m.scorings else None
    merged = merge_sequence(hidden, call.mask, s.keep_start, s.keep_end, s.method, call.positions,
                            s.similarity, s.ratio, scores=scores, target=s.target, protect=s.protect, chunk=s.chunk,
                            word_starts=call.word_starts)
    return enter(m, k, merged.hidden_states, merged.plan.mask, merged.positions)


def start(m, hidden: torch.Tensor) -> None:
    """At the first cutoff of a prefill (B, S, D): check its padding mask and start a new prompt record."""
    call = m.call
    batch, q, _ = hidden.shape
    if call.pad_mask is not None and call.pad_mask.shape != (batch, q):
        raise ValueError(f"attention_mask {tuple(call.pad_mask.shape)} does not match the input {(batch, q)}")
    positions = call.positions if call.positions is not None else torch.arange(q, device=hidden.device)[None]
    call.positions = positions.expand(batch, q)
    call.mask = call.pad_mask
    m.prompt = Prompt(cache=weakref.ref(call.cache) if call.cache is not None else None, length=q,
                      right_padded=call.pad_mask is not None and not bool(call.pad_mask[:, -1].all()))


def enter(m, k: int, hidden: torch.Tensor, real: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Stage k's prefill input: ``hidden`` (B, S_k, D), its real tokens (B, S_k) and their true positions."""
    call, s = m.call, m.settings
    seen, shift = positions, 0
    if s.positions == "reindex":
        seen = (real.long().cumsum(1) - 1).clamp(min=0)
        last = _last_real(real)[:, None]
        shift = positions.gather(1, last).round().long() - seen.gather(1, last)
    record = Record(None if bool(real.all()) else real, hidden.shape[1], shift, positions)
    m.prompt.stages.append(record)
    call.mask, call.positions = record.mask, positions
    entries = positions if slides(m, k, m.prompt.length) else None
    m.inputs[k] = LayerInputs(hidden, seen, record.mask, 0, reuse=False, entries=entries)
    for layer_type in m.stages[k].mask_layer:  # now, while the stage's input is at hand
        m.inputs[k].built[layer_type] = layer_kwargs(m, k, layer_type)
    return hidden


def keep(m, hidden: torch.Tensor) -> Kept:
    """At a read's cutoff: what questions need of the context (the later layers never run)."""
    start(m, hidden)
    call = m.call
    keys = {}
    for layer, probe in m.scorings[0].probes.items():
        if probe.window is not None:  # a sliding cache keeps only its window, and a question's tokens push
            keys[layer] = probe.attended(call.mask).keys  # the context's out of it
    mask = None if call.mask is None or bool(call.mask.all()) else call.mask.bool()
    return Kept(hidden, mask, call.positions, keys, held(call.cache), call.word_starts)


def reselect(m, hidden: torch.Tensor) -> torch.Tensor:
    """At the cutoff of a question (B, Q, D) on a kept context: rank the context's tokens by the question's
    queries, plan them as the method does (the settings' ends apply to the context), and hand the later layers
    the chosen tokens and the whole question, as the prefill of both."""
    call, s, kept = m.call, m.settings, m.kept
    m.kept = None
    batch, q, _ = hidden.shape
    size = kept.hidden.shape[1]
    positions = call.positions  # (B, q) the question's true positions
    if positions is None:
        positions = torch.arange(size, size + q, device=hidden.device)[None]
    positions = positions.expand(batch, q)
    question = (call.pad_mask[:, size:].bool() if call.pad_mask is not None
                else torch.ones(batch, q, dtype=torch.bool, device=hidden.device))
    context = kept.mask if kept.mask is not None else torch.ones(batch, size, dtype=torch.bool,
                                                                device=hidden.device)
    keys = {layer: kept.keys[layer] if layer in kept.keys else call.cache.layers[layer].keys[:, :, :size]
            for layer in m.scorings[0].probes}
    window = min(s.score_window, int(question.sum(1).min()))  # the question's own last tokens score
    scores = m.scorings[0].importance(torch.cat([context, question], 1), keys, window)[:, :size]
    merged = merge_sequence(kept.hidden, context, s.keep_start, s.keep_end, s.method, kept.positions,
                            s.similarity, s.ratio, scores=scores, target=s.target, protect=s.protect, chunk=s.chunk,
                            word_starts=kept.word_starts)
    # from here on this call is the prefill of the chosen context and the question
    m.prompt = Prompt(cache=weakref.ref(call.cache), length=size + q, right_padded=not bool(question[:, -1].all()))
    call.past = 0
    return enter(m, 0, torch.cat([merged.hidden_states, hidden], 1), torch.cat([merged.plan.mask, question], 1),
                 torch.cat([merged.positions, positions.to(merged.positions.dtype)], 1))


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) bool -> (B,) index of each row's last real token (0 for an empty row)."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, idx, 0).amax(1)
