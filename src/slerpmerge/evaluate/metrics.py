"""How far a merged model's next-token distribution is from the base model's, and intervals for the averages."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats


def match_rate(a: list[int], b: list[int]) -> float:
    """Fraction of generated tokens equal at the same step (over the longer of the two); the rows' `gen_match`."""
    n = max(len(a), len(b))
    return sum(x == y for x, y in zip(a, b)) / n if n else 1.0


def next_token_metrics(base_logits: torch.Tensor, merged_logits: torch.Tensor) -> dict:
    """Both (V,) logits at the same real position. KL(base || merged) in nats."""
    base_logits, merged_logits = base_logits.float(), merged_logits.float()
    top1 = int(base_logits.argmax())
    merged_top5 = merged_logits.topk(5).indices.tolist()
    base_top5 = set(base_logits.topk(5).indices.tolist())
    base_logp = torch.log_softmax(base_logits, -1)
    merged_logp = torch.log_softmax(merged_logits, -1)
    return {
        "top1_agree": float(top1 == merged_top5[0]),
        "top3_contains": float(top1 in merged_top5[:3]),
        "top5_contains": float(top1 in merged_top5),
        "top5_overlap": len(base_top5 & set(merged_top5)) / 5,
        "kl": float((base_logp.exp() * (base_logp - merged_logp)).sum()),
    }


def wilson(successes: float, n: int) -> tuple[float, float]:
    """95 % Wilson score interval for a rate of ``successes`` in ``n`` (scipy.stats)."""
    if n == 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(round(successes), n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def bootstrap(values: list[float], seed: int = 0, rounds: int = 1000) -> tuple[float, float]:
    """95 % percentile bootstrap interval for a mean (scipy.stats); a single value is its own interval."""
    if not values:
        return (math.nan, math.nan)
    if len(values) == 1 or min(values) == max(values):
        return (float(values[0]), float(values[0]))
    ci = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=rounds, confidence_level=0.95,
                         method="percentile", random_state=seed).confidence_interval
    return (float(ci.low), float(ci.high))
