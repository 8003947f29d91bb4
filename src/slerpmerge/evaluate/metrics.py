"""How far a merged model's next-token distribution is from the base model's, and intervals for the averages."""

from __future__ import annotations

import math
import random

import torch

from ..generate import match_rate  # noqa: F401  (one definition, shared with `generate --compare`)


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


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval for a rate."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: list[float], seed: int = 0, rounds: int = 1000) -> tuple[float, float]:
    """95 % percentile bootstrap interval for a mean."""
    if not values:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])
