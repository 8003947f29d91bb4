"""Pick the fastest merge setting that keeps next-token top-1 agreement at or above a target.

Candidates (cutoffs across the depth x recent windows x pairing rules x stages) are scored on calibration windows
against the base model; speed is the ideal speedup from the model's shapes at the lengths each stage really saw,
since the measured speedup follows it closely (docs/benchmarks.md) and is far noisier on a small set.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch

from .bench import ideal_speedup
from .evaluate.corpus import read_texts, token_stream, windows
from .hooks import MergeSettings, merged_lengths, merging


def candidates(num_layers: int, quick: bool = False) -> list[dict]:
    """The settings tried: single cuts, the most-similar half of the pairs, and two-stage merges."""
    fractions = (0.2, 0.4, 0.6, 0.8) if quick else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    cuts = sorted({min(num_layers - 2, max(1, round(num_layers * f))) for f in fractions})
    windows_kept = (32, 128) if quick else (16, 32, 64, 128)
    out = []
    for keep_end in windows_kept:
        for c in cuts:
            for method in ("slerp", "drop"):
                out.append(dict(layer_cutoff=c, keep_start=4, keep_end=keep_end, method=method))
            out.append(dict(layer_cutoff=c, keep_start=4, keep_end=keep_end, ratio=0.5))
        for i, c1 in enumerate(cuts):
            for c2 in cuts[i + 1:]:
                out.append(dict(layer_cutoff=[c1, c2], keep_start=4, keep_end=keep_end))
    return out


@torch.inference_mode()
def score(model, windows_ids: list[torch.Tensor], settings: list[dict], progress=None) -> list[dict]:
    """Top-1 agreement with the base model's next token, and the ideal speedup, for every setting."""
    base = [int(model(ids[None], logits_to_keep=1).logits[0, -1].argmax()) for ids in windows_ids]
    results = []
    for s in settings:
        agree, lengths = [], []
        with merging(model, **s):
            for ids, want in zip(windows_ids, base):
                agree.append(int(model(ids[None], logits_to_keep=1).logits[0, -1].argmax()) == want)
                lengths.append(merged_lengths(model))
        mean_lengths = [round(statistics.mean(stage)) for stage in zip(*lengths)]
        length = windows_ids[0].numel()
        results.append({"settings": s, "agreement": sum(agree) / len(agree),
                        "ideal_speedup": ideal_speedup(model, length, mean_lengths, MergeSettings(**s).cutoffs),
                        "merged_length": mean_lengths[-1]})
        if progress:
            progress.update(1)
    return results


def pick(results: list[dict], target: float) -> dict:
    ok = [r for r in results if r["agreement"] >= target]
    if not ok:
        best = max(results, key=lambda r: (r["agreement"], r["ideal_speedup"]))
        raise ValueError(f"no candidate keeps top-1 agreement >= {target:.2f}; the best reached "
                         f"{best['agreement']:.2f} with {json.dumps(best['settings'])}")
    return max(ok, key=lambda r: (r["ideal_speedup"], r["agreement"]))


def add_parser(sub, model_arguments) -> None:
    p = sub.add_parser("tune", help="pick the fastest setting that keeps top-1 agreement >= a target",
                       description="Score candidate settings on calibration windows against the base model and "
                                   "save the fastest that meets --target-agreement as patch keyword arguments.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    p.add_argument("--target-agreement", type=float, default=0.9)
    p.add_argument("--out", type=Path, help="write the chosen settings here (JSON; `--config` reads it)")
    p.add_argument("--quick", action="store_true", help="a small calibration set: a few minutes on 2 cores")
    p.add_argument("--length", type=int, help="calibration window length (default 512, quick 256)")
    p.add_argument("--windows", type=int, help="calibration windows (default 32, quick 12)")
    p.add_argument("--corpus", help=".txt, .jsonl or a folder (default: Python's pydoc topics)")
    p.add_argument("--seed", type=int, default=1, help="windows differ from `eval`'s default seed 0")

    def cmd(args):
        from tqdm import tqdm

        from .models import load

        if not 0.0 <= args.target_agreement <= 1.0:
            raise ValueError("--target-agreement is a fraction in [0, 1]")
        torch.set_num_threads(args.threads)
        model, tokenizer = load(args.model, cache=args.cache_dir)
        length = args.length or (256 if args.quick else 512)
        count = args.windows or (12 if args.quick else 32)
        ids = windows(token_stream(tokenizer, read_texts(args.corpus)), length, count, args.seed)
        settings = candidates(model.config.num_hidden_layers, args.quick)
        with tqdm(total=len(settings), desc="tune", unit="setting") as bar:
            results = score(model, ids, settings, bar)
        chosen = pick(results, args.target_agreement)
        print(f"{len(settings)} settings on {count} windows of {length} tokens; the fastest with top-1 agreement "
              f">= {args.target_agreement:.2f}:")
        print(f"  {json.dumps(chosen['settings'])}")
        print(f"  agreement {chosen['agreement']:.2f}, ideal prefill speedup {chosen['ideal_speedup']:.2f}x "
              f"({length} -> {chosen['merged_length']} tokens after the last cutoff)")
        if args.out:
            args.out.write_text(json.dumps(chosen["settings"], indent=1) + "\n")
            print(f"saved to {args.out}: patch(model, **json.load(open('{args.out}'))) or --config {args.out}")

    p.set_defaults(func=cmd)
