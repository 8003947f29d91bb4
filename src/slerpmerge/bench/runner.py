"""Base and merged on the same inputs: prefill and decode speed, KV bytes, peak memory, the merge's own cost."""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass

import torch

from ..patching import merged_lengths, merging
from ..settings import MergeSettings
from .ideal import ideal_speedup
from .memory import peak_bytes
from .timing import merge_cost, time_decode, time_prefill


@dataclass
class Row:
    length: int
    layer_cutoff: int | list[int]
    merged_length: int
    base_prefill_s: float
    merged_prefill_s: float
    base_prefill_spread: list[float]  # min, max over the runs
    merged_prefill_spread: list[float]
    speedup: float
    ideal_speedup: float
    efficiency: float
    base_decode_tok_s: float | None
    merged_decode_tok_s: float | None
    decode_speedup: float | None
    base_decode_spread: list[float] | None  # min, max tokens/s over the decode runs
    merged_decode_spread: list[float] | None
    base_kv_bytes: int
    merged_kv_bytes: int
    base_peak_bytes: int | None
    merged_peak_bytes: int | None
    merge_s: float  # the merge as the patch runs it, token scores included
    score_s: float  # the token scores alone (0 for methods that score nothing)
    layer_s: float  # one decoder layer (the first cutoff's) on the full sequence
    merge_share_of_layer: float
    score_share_of_layer: float
    runs: int
    settings: dict  # the patch keyword arguments


def bench_model(model, ids: torch.Tensor, variants: list[dict], runs: int = 5, decode_tokens: int = 64,
                progress=None) -> list[Row]:
    """Base and each merged variant (patch kwargs) on the same `ids` (1, S): base measured once, runs interleaved
    so that drift on the machine hits base and merged alike."""
    length = ids.shape[1]
    keys = [None, *range(len(variants))]

    def patched(v):
        return contextlib.nullcontext() if v is None else merging(model, **variants[v])

    prefill = {v: [] for v in keys}
    kv, stage_lengths = {}, {}
    for v in keys:  # warm-up, KV size and the lengths each stage sees
        with patched(v):
            time_prefill(model, ids)
            kv[v] = time_prefill(model, ids)[1]
            if v is not None:
                stage_lengths[v] = merged_lengths(model)
    for _ in range(runs):
        for v in keys:
            with patched(v):
                prefill[v].append(time_prefill(model, ids)[0])
            if progress:
                progress.update(1)
    rates = {v: [] for v in keys}
    if decode_tokens:
        for v in keys:
            with patched(v):
                time_decode(model, ids, 2)  # warm-up
        for _ in range(runs):
            for v in keys:
                with patched(v):
                    rates[v].append(time_decode(model, ids, decode_tokens))
    if progress:
        progress.update(len(keys))
    decode = {v: statistics.median(rates[v]) if rates[v] else None for v in keys}
    peak = dict(zip(keys, peak_bytes(model, ids, variants)))
    rows = []
    for v, settings in enumerate(variants):
        base, merged = statistics.median(prefill[None]), statistics.median(prefill[v])
        merge_settings = MergeSettings.make(**settings)
        ideal = ideal_speedup(model, length, stage_lengths[v], merge_settings.cutoffs)
        cost = merge_cost(model, ids, merge_settings)
        rows.append(Row(
            length=length, layer_cutoff=settings["layer_cutoff"], merged_length=stage_lengths[v][-1],
            base_prefill_s=base, merged_prefill_s=merged,
            base_prefill_spread=[min(prefill[None]), max(prefill[None])],
            merged_prefill_spread=[min(prefill[v]), max(prefill[v])],
            speedup=base / merged, ideal_speedup=ideal, efficiency=base / merged / ideal,
            base_decode_tok_s=decode[None], merged_decode_tok_s=decode[v],
            base_decode_spread=[min(rates[None]), max(rates[None])] if rates[None] else None,
            merged_decode_spread=[min(rates[v]), max(rates[v])] if rates[v] else None,
            decode_speedup=decode[v] / decode[None] if decode[None] else None,
            base_kv_bytes=kv[None], merged_kv_bytes=kv[v], base_peak_bytes=peak[None], merged_peak_bytes=peak[v],
            merge_s=cost["merge_s"], score_s=cost["score_s"], layer_s=cost["layer_s"],
            merge_share_of_layer=cost["merge_s"] / cost["layer_s"],
            score_share_of_layer=cost["score_s"] / cost["layer_s"], runs=runs, settings=settings,
        ))
    return rows


def bench_ids(tokenizer, length: int, vocab_size: int, device) -> torch.Tensor:
    """`length` tokens of real text (the embedded document, repeated), or seeded random ids with no tokenizer."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab_size, (1, length), generator=g).to(device)
    from ..data import long_document

    ids = tokenizer(long_document(), return_tensors="pt").input_ids
    while ids.shape[1] < length:
        ids = torch.cat([ids, ids], 1)
    return ids[:, :length].to(device)
