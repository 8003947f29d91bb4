"""The measured prefill speedup of every setting at a length, beside its ideal: one input, runs interleaved.

The time to the first token depends on the lengths each layer sees, not on the words, so it is measured once per
(setting, length) on the embedded document repeated to length, with warm-up, several runs, base and settings
interleaved run by run (drift hits all alike), and the median kept with its spread. Selection's time includes its
first pass; truncation's only the shorter prompt.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from ..bench.ideal import flops, ideal_speedup, layer_work, rerun_speedup
from ..bench.runner import bench_ids
from ..patching import merged_lengths, merging
from ..methods import METHODS
from ..settings import MergeSettings
from .runs import key, prefill


def ideal(model, length: int, setting: dict, merged: list[int]) -> float:
    """The work ratio the setting should reach, from counting each layer's work at the length it sees."""
    method = setting["method"]
    if method == "base":
        return 1.0
    shorter = math.ceil(length * setting["target"]) if method in ("truncate", "select") else None
    if method == "truncate":
        shapes = layer_work(model)
        return sum(flops(shapes, length)) / sum(flops(shapes, shorter))
    if method == "select":
        return rerun_speedup(model, length, setting["layer_cutoff"], shorter)
    return ideal_speedup(model, length, merged, MergeSettings.make(**setting).cutoffs)


@torch.inference_mode()
def measure(model, tokenizer, length: int, settings: list[dict], runs: int = 5, progress=None) -> list[dict]:
    """One row per setting (base included): median prefill seconds, spread, speedup over base, ideal."""
    ids = bench_ids(tokenizer, length, model.config.vocab_size, model.device)
    everything = [{"method": "base"}, *[s for s in settings if s["method"] != "base"]]
    merged = {}
    for s in everything:  # warm-up, and the lengths the stages see
        prefill(model, ids, s)
        if s["method"] in METHODS:
            with merging(model, **s):
                prefill(model, ids, {"method": "base"})
                merged[key(s)] = merged_lengths(model)
    times = {key(s): [] for s in everything}
    for _ in range(runs):
        for s in everything:
            start = time.perf_counter()
            prefill(model, ids, s)
            times[key(s)].append(time.perf_counter() - start)
            if progress:
                progress.update(1)
    base = statistics.median(times[key(everything[0])])
    rows = []
    for s in everything:
        t = times[key(s)]
        rows.append({"length": length, "setting": key(s), "prefill_s": statistics.median(t),
                     "spread": [min(t), max(t)], "speedup": base / statistics.median(t), "runs": runs,
                     "ideal_speedup": ideal(model, length, s, merged.get(key(s)))})
    return rows
