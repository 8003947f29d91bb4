"""Timing one prefill, a run of decode steps, and the merge itself.

Prefill and decode runs are single calls timed with perf_counter (and a CUDA sync) rather than through
torch.utils.benchmark: the benchmark interleaves base and merged run by run, so that drift on the machine hits both
alike, and a Timer measures one statement in blocks of its own. The merge and a decoder layer, timed in isolation,
go through torch.utils.benchmark.
"""

from __future__ import annotations

import time

import torch
from torch.utils import benchmark
from transformers import DynamicCache

from .. import methods
from ..compat import Api, cache_kwargs
from ..merge import merge_sequence
from ..probe import Scoring
from ..settings import MergeSettings


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if isinstance(t, torch.Tensor))


@torch.inference_mode()
def time_prefill(model, ids: torch.Tensor) -> tuple[float, int]:
    """Seconds for one prefill (fresh cache, logits of the last position only) and the KV bytes it leaves."""
    cache = DynamicCache(config=model.config)
    sync(ids.device)
    start = time.perf_counter()
    model(ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    sync(ids.device)
    return time.perf_counter() - start, cache_bytes(cache)


@torch.inference_mode()
def time_decode(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Greedy tokens per second after the prefill, which is not counted."""
    cache = DynamicCache(config=model.config)
    out = model(ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    sync(ids.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = model(token, **cache_kwargs(model, cache), use_cache=True).logits[:, -1:].argmax(-1)
    sync(ids.device)
    return new_tokens / (time.perf_counter() - start)


def median_seconds(fn) -> float:
    """Median of blocks of calls, as long as torch.utils.benchmark finds it needs, at the current thread count."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.2).median


@torch.inference_mode()
def merge_cost(model, ids: torch.Tensor, settings: MergeSettings) -> dict:
    """Seconds of the merge (with the token scores of a scored method, from the score layer's queries and keys) as
    the patch calls it, of the scores alone, and of the first cutoff's decoder layer, all on that layer's real
    input."""
    cutoff = settings.cutoffs[0]
    layer = model.model.layers[cutoff]
    seen, no_cache = {}, {Api.of(model.model).cache_arg: None, "use_cache": False}

    def grab(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, {**kwargs, **no_cache}

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    scoring = None
    if methods.get(settings.method).scored:
        scoring = Scoring(model.model.layers, model.config, settings, cutoff)
        scoring.arm(True)
    try:
        output = model(ids, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    del output
    hidden = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    s = settings
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    options = dict(similarity=s.similarity, ratio=s.ratio, target=s.target, protect=s.protect, chunk=s.chunk)
    score_s = 0.0
    if scoring is not None:
        scoring.arm(False)
        scoring.remove()
        caught = {layer: probe.caught for layer, probe in scoring.probes.items()}

        def scores():
            for layer, probe in scoring.probes.items():
                probe.caught = dict(caught[layer])
            return scoring.importance(None)

        score_s = median_seconds(scores)
        merge = lambda: merge_sequence(hidden, None, s.keep_start, s.keep_end, s.method, positions,  # noqa: E731
                                       scores=scores(), **options)
    else:
        merge = lambda: merge_sequence(hidden, None, s.keep_start, s.keep_end, s.method, positions,  # noqa: E731
                                       **options)
    return {"merge_s": median_seconds(merge), "score_s": score_s,
            "layer_s": median_seconds(lambda: layer(*seen["args"], **seen["kwargs"]))}
