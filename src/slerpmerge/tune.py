"""Pick the fastest setting, among every method, that keeps both next-token agreement on prose and the answers of
retrieval tasks at or above their targets.

Candidates: every method's own option values (`Method.tune`) at cutoffs across the depth, with exact recent windows
of 32, 128 and 256 tokens (the longest keeps prose at 2x, docs/results.md; quick: the first two); scored methods with
all heads, with the heads `calibrate` chooses for their cutoff, and with those and a `mix`: the key norms of the
layer at or before the cutoff whose heads rank facts best with their question cut off (docs/settings.md). Speed is the
ideal speedup at the retrieval length (the measured speedup follows it closely, docs/benchmarks.md, and is far
noisier on a few windows).
Candidates are tried from the fastest down, retrieval first (one lost answer ends a candidate); the first that meets
both targets, and keeps the base model's answers on held-out items too, is chosen. Calibration, tuning, the
held-out check and `eval` use different items (seeds 2, 1, 3 and 0).
"""

from __future__ import annotations

import json
import os

import torch

from . import calibrate
from .bench.ideal import ideal_speedup
from .evaluate.corpus import begin, read_texts, token_stream, windows
from .evaluate.runs import check
from .evaluate.shapes import SHAPES, answer, shaped
from .evaluate.tasks import TASKS, correct
from .patching import merging
from .merge import merge_sequence
from .methods import METHODS
from .settings import MergeSettings, cutoff_grid, label

SCORED = dict(window=8, spread=8)  # what `calibrate` found best on SmolLM2 (docs/results.md)


def candidates(num_layers: int, quick: bool = False, heads: dict | None = None,
               mixes: dict | None = None) -> list[dict]:
    """Every method's `tune` options at cutoffs across the depth and two recent windows, and two-stage merges;
    scored methods also with each cutoff's calibrated heads (``heads``: cutoff -> heads), and with those and a mix
    (``mixes``: cutoff -> a second ranking for it)."""
    fractions = (0.25, 0.5, 0.75) if quick else (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    cuts = [c for c in cutoff_grid(num_layers, fractions) if 0 < c < num_layers - 1]
    out = []
    for keep_end in (32, 128) if quick else (32, 128, 256):  # 256: prose at 2x needs a long exact window
        for c in cuts:
            for name, method in METHODS.items():
                for options in method.tune:
                    s = dict(layer_cutoff=c, keep_start=4, keep_end=keep_end, method=name, **options)
                    if method.scored:
                        s.update(SCORED)
                        if heads and c in heads:
                            out.append({**s, "heads": list(heads[c])})
                            if mixes and c in mixes:
                                out.append({**s, "heads": list(heads[c]), "mix": mixes[c]})
                    out.append(s)
        for i, c1 in enumerate(cuts):
            for c2 in cuts[i + 1:]:
                out.append(dict(layer_cutoff=[c1, c2], keep_start=4, keep_end=keep_end))
    return out


def stage_lengths(setting: dict, length: int, dim: int = 8) -> list[int]:
    """The tokens each stage of `setting` leaves of a `length`-token prompt, from the merge itself on random
    vectors (pair rules read lengths only; scored rules keep their target whatever the scores)."""
    s = MergeSettings.make(**setting)
    g = torch.Generator().manual_seed(0)
    hidden, out = torch.randn(1, length, dim, generator=g), []
    o = s.options
    for _ in s.cutoffs:
        scores = torch.rand(hidden.shape[:2], generator=g) if METHODS[s.method].scored else None
        hidden = merge_sequence(hidden, None, s.keep_start, s.keep_end, s.method, None, o.get("similarity"),
                                o.get("ratio"), scores=scores, target=o.get("target"),
                                protect=o.get("protect"), chunk=o.get("chunk")).hidden_states
        out.append(hidden.shape[1])
    return out


def ideal(model, setting: dict, length: int) -> float:
    return ideal_speedup(model, length, stage_lengths(setting, length), MergeSettings.make(**setting).cutoffs)


@torch.inference_mode()
def agreement(model, prose: list[torch.Tensor], base: list[int], setting: dict) -> float:
    """Top-1 agreement with the base model's next token over the prose windows."""
    with merging(model, **setting):
        hits = [int(model(ids[None], logits_to_keep=1).logits[0, -1].argmax()) == want
                for ids, want in zip(prose, base)]
    return sum(hits) / len(hits)


@torch.inference_mode()
def answers(model, tokenizer, items, setting: dict | None, stop_at_miss: list[bool] | None = None,
            shape: str = "end") -> list[bool]:
    """Which items the model answers in a prompt shape (patched by `setting` unless None); with ``stop_at_miss``
    (the base model's answers), stop at the first item the base answers and this setting does not."""
    got = []
    for i, item in enumerate(items):
        context, question = shaped(tokenizer, item, shape)
        tokens, _ = answer(model, context, question, check(setting or {"method": "base"}), shape, 8,
                           tokenizer.pad_token_id)
        got.append(correct(tokenizer.decode(tokens, skip_special_tokens=True), item.answers))
        if stop_at_miss is not None and stop_at_miss[i] and not got[-1]:
            break
    return got


def kept(model, tokenizer, items, setting: dict, base: list[bool], shape: str) -> float:
    """The share of the base model's right answers (``base``) that ``setting`` keeps on ``items``."""
    got = answers(model, tokenizer, items, setting, base, shape)
    return sum(g and b for g, b in zip(got, base)) / sum(base) if any(base) else 1.0


def search(model, tokenizer, prose, items, settings: list[dict], target_agreement: float,
           target_retrieval: float, length: int, progress=None, shape: str = "end",
           holdout=()) -> tuple[dict | None, list[dict]]:
    """The fastest setting meeting both targets (None if none does), and every setting tried. A few items let a
    candidate pass by chance, so one that meets both must also keep the base model's answers on the ``holdout``
    items at the retrieval target."""
    base_next = [int(model(ids[None], logits_to_keep=1).logits[0, -1].argmax()) for ids in prose]
    base_right = answers(model, tokenizer, items, None, shape=shape)
    speed = {json.dumps(s, sort_keys=True): ideal(model, s, length) for s in settings}
    ranked = sorted(settings, key=lambda s: speed[json.dumps(s, sort_keys=True)], reverse=True)
    tried, base_held = [], None
    for s in ranked:
        row = {"settings": s, "label": label(s), "ideal_speedup": speed[json.dumps(s, sort_keys=True)]}
        row["retrieval"] = kept(model, tokenizer, items, s, base_right, shape)
        if row["retrieval"] >= target_retrieval:
            row["agreement"] = agreement(model, prose, base_next, s)
        tried.append(row)
        if progress:
            progress.update(1)
        if row["retrieval"] >= target_retrieval and row["agreement"] >= target_agreement:
            if holdout:
                if base_held is None:
                    base_held = answers(model, tokenizer, holdout, None, shape=shape)
                row["holdout"] = kept(model, tokenizer, holdout, s, base_held, shape)
            if row.get("holdout", 1.0) >= target_retrieval:
                return row, tried
    return None, tried


def shown(tried: list[dict], last: int = 5) -> list[dict]:
    """The rows a run prints: every candidate the held-out check judged (the ones it passed over say why the
    pick is not faster), then the last `last` tried, in the order tried."""
    cut = max(len(tried) - last, 0)
    return [r for r in tried[:cut] if "holdout" in r] + tried[cut:]


def run(args) -> dict:
    from tqdm import tqdm

    from .models import check_length, load

    for name in ("target_agreement", "target_retrieval"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} is a fraction in [0, 1]")
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, cache=args.cache_dir)
    layers = model.config.num_hidden_layers
    q = args.quick
    length, count = args.length or (256 if q else 1024), args.windows or (8 if q else 24)
    rlength, n_items = args.retrieval_length or (512 if q else 2048), args.items or (4 if q else 8)
    check_length(model, max(length, rlength), "give a shorter --length or --retrieval-length")
    stream = token_stream(tokenizer, read_texts(args.corpus))
    prose = windows(stream, length, count, args.seed, begin(tokenizer))
    items = [it for t in args.tasks for it in TASKS[t](tokenizer, stream, rlength, n_items, args.seed)]
    calibration = [it for t in args.tasks for it in TASKS[t](tokenizer, stream, rlength, n_items, args.seed + 1)]
    holdout = [it for t in args.tasks for it in TASKS[t](tokenizer, stream, rlength, n_items, args.seed + 2)]
    later = args.shape == "later"
    print(f"calibrating heads on {len(calibration)} items of {rlength} tokens"
          f"{' with their questions cut off' if later else ''} ...", flush=True)
    scores = calibrate.head_scores(model, calibration, SCORED["window"], question_free=later)
    heads = {c: calibrate.choose_heads([s[c] for s in scores], calibration, args.heads, SCORED["spread"])
             for c in range(layers)}
    # a mix for each cutoff: the layer at or before it whose key norms rank the facts best without their question
    by_norm = calibrate.best_layers(calibrate.head_scores(model, calibration, SCORED["window"], "keynorm", True),
                                    calibration, args.heads, SCORED["spread"])
    mixes = {}
    for c in range(layers):
        at = min(range(c + 1), key=lambda i: by_norm[i][0])
        mixes[c] = {"score": "keynorm", "layer": at, "heads": by_norm[at][1]}
    settings = candidates(layers, q, heads, mixes)
    with tqdm(total=len(settings), desc="tune", unit="setting") as bar:
        chosen, tried = search(model, tokenizer, prose, items, settings, args.target_agreement,
                               args.target_retrieval, rlength, bar, args.shape, holdout)
    print(f"{len(tried)} of {len(settings)} settings tried, fastest first, on {count} prose windows of {length} "
          f"tokens and {len(items)} retrieval items of {rlength} ({', '.join(args.tasks)}, shape {args.shape}; "
          f"a pass confirmed on {len(holdout)} held-out items):")
    for row in shown(tried):
        agree = f"{row['agreement']:.2f}" if "agreement" in row else "-"
        held = f"  held out {row['holdout']:.2f}" if "holdout" in row else ""
        print(f"  {row['label']:58} ideal {row['ideal_speedup']:.2f}x  retrieval {row['retrieval']:.2f}  "
              f"agreement {agree}{held}")
    if chosen is None:
        raise ValueError(f"no candidate keeps agreement >= {args.target_agreement:.2f} and retrieval >= "
                         f"{args.target_retrieval:.2f}")
    print(f"chosen: {json.dumps(chosen['settings'])}")
    if args.out:
        args.out.write_text(json.dumps(chosen["settings"], indent=1) + "\n")
        print(f"saved to {args.out}: patch(model, **json.load(open('{args.out}'))) or --config {args.out}")
    return chosen


def add_parser(sub, model_arguments) -> None:
    from pathlib import Path

    p = sub.add_parser("tune", help="the fastest setting of any method that keeps agreement and retrieval",
                       description="Calibrate the heads that find facts, then try every method's candidate "
                                   "settings from the fastest down, on prose windows (top-1 agreement with the base "
                                   "model) and retrieval items (the answers the base model gets), and save the "
                                   "first that meets both targets as patch keyword arguments.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    p.add_argument("--target-agreement", type=float, default=0.9, help="next-token top-1 agreement on prose")
    p.add_argument("--target-retrieval", type=float, default=1.0,
                   help="share of the base model's right answers kept (1: all of them)")
    p.add_argument("--out", type=Path, help="write the chosen settings here (JSON; `--config` reads it)")
    p.add_argument("--quick", action="store_true", help="a small search: minutes on 2 cores")
    p.add_argument("--length", type=int, help="prose window length (default 1024, quick 256)")
    p.add_argument("--windows", type=int, help="prose windows (default 24, quick 8)")
    p.add_argument("--retrieval-length", type=int, help="retrieval prompt length (default 2048, quick 512)")
    p.add_argument("--items", type=int, help="retrieval items per task (default 8, quick 4)")
    p.add_argument("--tasks", type=lambda s: s.split(","), default=["once", "facts"])
    p.add_argument("--shape", choices=SHAPES, default="end",
                   help="where the question sits in the retrieval items (later: the context is shortened before "
                        "its question; `eval --shapes`)")
    p.add_argument("--heads", type=int, default=2, help="heads chosen per layer by the calibration")
    p.add_argument("--corpus", help=".txt, .jsonl or a folder (default: Python's pydoc topics)")
    p.add_argument("--seed", type=int, default=1, help="windows and items differ from `eval`'s default seed 0")
    p.set_defaults(func=run)
