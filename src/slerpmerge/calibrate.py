"""Where a fact ranks among a prompt's tokens by a scorer, at every layer and head, and which heads of a layer find
facts best.

The scored methods keep the tokens their scorer ranks best at the cutoff (or the score layer), so they can keep a
fact only where the score ranks it high. With the question cut off (`question_free`), the ranks say what a context
compressed before its question can keep. A fact's rank is the number of tokens that must be kept to keep every token of its
answer (at the best of the places it is stated): 1 is perfect. Heads are chosen on calibration items and judged on
others; the chosen heads go into a setting as ``heads``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from .architecture import layer_types
from .probe import AttentionProbe
from .score import spread
from .scorers import SCORERS


def token_ranks(scores: torch.Tensor) -> torch.Tensor:
    """(..., S) -> (..., S): 1 for the highest score."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    return torch.empty_like(order).scatter_(-1, order, torch.arange(1, scores.shape[-1] + 1).expand_as(order))


def fact_rank(ranks: torch.Tensor, places) -> torch.Tensor:
    """(..., S) ranks -> (...): tokens kept before every token of the answer is, at its best place."""
    return torch.stack([ranks[..., list(place)].amax(-1) for place in places], -1).amin(-1)


@torch.inference_mode()
def head_scores(model, items, window: int, score: str = "last", question_free: bool = False
                ) -> list[list[torch.Tensor]]:
    """Per item, per layer: (H, S) each head's score of each token (by default the attention its last `window`
    queries pay it), of the whole prompt or of the prompt without its question. One forward per item, a probe on
    every layer."""
    types = layer_types(model.config)
    probes = [AttentionProbe(layer, model.config, model.config.sliding_window if kind == "sliding_attention"
                             else None) for layer, kind in zip(model.model.layers, types)]
    out = []
    try:
        for item in items:
            for probe in probes:
                probe.armed = True
            model.model(input_ids=item.context if question_free else item.ids, use_cache=False)
            for probe in probes:
                probe.armed = False
            out.append([SCORERS[score](probe.attended(None), window)[0] for probe in probes])
    finally:
        for probe in probes:
            probe.remove()
    return out


def ranks_by(scores: list[torch.Tensor], items, heads, radius: int) -> torch.Tensor:
    """(items,) the fact's rank by the mean of `heads` (all when None), spread over `radius` neighbours."""
    out = []
    for each, item in zip(scores, items):
        pooled = each.mean(0) if heads is None else each[list(heads)].mean(0)
        out.append(fact_rank(token_ranks(spread(pooled[None], radius)[0]), item.fact))
    return torch.stack(out)


def choose_heads(scores: list[torch.Tensor], items, count: int, radius: int) -> list[int]:
    """The `count` heads whose own fact rank has the lowest median over the items (scores: per item (H, S))."""
    per_head = torch.stack([ranks_by(scores, items, [h], radius) for h in range(scores[0].shape[0])])
    return sorted(per_head.float().median(1).values.argsort()[:count].tolist())


def best_layers(scores: list[list[torch.Tensor]], items, count: int, radius: int) -> list[tuple[float, list[int]]]:
    """Per layer: the `count` heads that rank the facts best there, and the median fact rank they give."""
    out = []
    for layer in range(len(scores[0])):
        at = [s[layer] for s in scores]
        heads = choose_heads(at, items, count, radius)
        out.append((float(ranks_by(at, items, heads, radius).float().median()), heads))
    return out


def table(scores: list[list[torch.Tensor]], items, count: int, radius: int) -> list[dict]:
    """Per layer: heads chosen on the first half of the items; on the second half, the fact's rank by all heads
    and by the chosen ones (median and worst)."""
    half = len(items) // 2
    rows = []
    for layer in range(len(scores[0])):
        at = [s[layer] for s in scores]
        heads = choose_heads(at[:half], items[:half], count, radius)
        pooled, chosen = ranks_by(at[half:], items[half:], None, radius), ranks_by(at[half:], items[half:], heads,
                                                                                   radius)
        rows.append({"layer": layer, "heads": heads, "pooled_median": float(pooled.float().median()),
                     "pooled_worst": int(pooled.max()), "heads_median": float(chosen.float().median()),
                     "heads_worst": int(chosen.max())})
    return rows


def run(args) -> list[dict]:
    from .evaluate.corpus import read_texts, token_stream
    from .evaluate.tasks import TASKS
    from .models import check_length, load

    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, cache=args.cache_dir)
    check_length(model, args.length, "give a shorter --length")
    stream = token_stream(tokenizer, read_texts(None))
    items = [it for task in args.tasks for it in TASKS[task](tokenizer, stream, args.length, args.items, args.seed)]
    rng = random.Random(args.seed)
    rng.shuffle(items)  # every task in both halves
    rows = table(head_scores(model, items, args.window, args.score, args.question_free), items, args.heads,
                 args.spread)
    by = f"the attention of the last {args.window} tokens" if args.score == "last" else f"score {args.score!r}"
    print(f"{args.model}: tokens to keep to keep the answer, of {args.length}, by {by} spread over {args.spread} "
          f"neighbours{', the question cut off' if args.question_free else ''} ({', '.join(args.tasks)}; heads "
          f"chosen on {len(items) // 2} items, judged on the other {len(items) - len(items) // 2})")
    print(f"{'layer':>6}{'all heads: median':>19}{'worst':>7}{'chosen heads':>14}{'their median':>14}{'worst':>7}")
    for r in rows:
        print(f"{r['layer']:>6}{r['pooled_median']:>19.0f}{r['pooled_worst']:>7}{','.join(map(str, r['heads'])):>14}"
              f"{r['heads_median']:>14.0f}{r['heads_worst']:>7}")
    if args.out:
        report = {"model": args.model, "length": args.length, "score": args.score,
                  "question_free": args.question_free, "window": args.window, "spread": args.spread,
                  "tasks": args.tasks, "items": len(items), "layers": rows}
        Path(args.out).write_text(json.dumps(report, indent=1))
    return rows


def add_parser(sub, model_arguments) -> None:
    p = sub.add_parser("calibrate", help="where facts rank by attention at each layer; which heads find them",
                       description="Rank the tokens that state a fact by the attention the last tokens pay them, "
                                   "at every layer and head, on task items; choose the heads of each layer that "
                                   "rank facts best on half the items and judge them on the other half.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    p.add_argument("--tasks", type=lambda s: s.split(","), default=["once", "facts", "word"])
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--items", type=int, default=12, help="items per task (half choose, half judge)")
    p.add_argument("--score", choices=list(SCORERS), default="last", help="how tokens are ranked")
    p.add_argument("--question-free", action="store_true",
                   help="rank with each item's question cut off: for a context compressed before it is asked about")
    p.add_argument("--window", type=int, default=8, help="last tokens whose attention scores")
    p.add_argument("--spread", type=int, default=8, help="a token scores the best within this many of it")
    p.add_argument("--heads", type=int, default=2, help="heads to choose per layer")
    p.add_argument("--seed", type=int, default=1, help="items differ from `eval`'s default seed 0")
    p.add_argument("--out", help="write the table and every rank as JSON")
    p.set_defaults(func=run)
