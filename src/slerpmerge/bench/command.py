"""`slerpmerge bench`: base and merged on the same inputs, at several lengths, written as JSON, a table and a plot."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from .. import settings as merge_settings
from .report import describe_machine, plot, print_table
from .runner import bench_ids, bench_model

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096)
DEFAULT_FRACTIONS = (0.15, 0.4, 0.65, 0.85)  # of the depth: the default sweep of cutoffs


def variants(args, num_layers: int) -> list[dict]:
    """One setting from the merge flags (over no keeps and slerp), swept over --cutoffs; with neither
    --layer-cutoff nor --config, swept over four cutoffs across the depth."""
    base = merge_settings.from_args(args, dict(keep_start=0, keep_end=0))
    cutoffs = args.cutoffs
    if cutoffs is None and "layer_cutoff" not in base:
        cutoffs = merge_settings.cutoff_grid(num_layers, DEFAULT_FRACTIONS)
    return [{**base, "layer_cutoff": c} for c in cutoffs] if cutoffs else [base]


def run(args) -> list[dict]:
    from tqdm import tqdm

    from ..models import check_length, load

    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, cache=args.cache_dir)
    device = torch.device(args.device)
    model.to(device)
    settings = variants(args, model.config.num_hidden_layers)
    lengths = args.lengths or list(DEFAULT_LENGTHS)
    check_length(model, max(lengths) + args.decode_tokens, "give shorter --lengths")
    machine = describe_machine(device)
    rows = []
    steps = len(lengths) * (args.runs + 1) * (len(settings) + 1)  # prefill runs, then decode
    with tqdm(total=steps, desc="bench", disable=args.json or None, leave=False) as bar:
        for length in lengths:
            ids = bench_ids(tokenizer, length, model.config.vocab_size, device)
            for row in bench_model(model, ids, settings, args.runs, args.decode_tokens, bar):
                rows.append({"model": args.model, **asdict(row), "dtype": str(model.dtype), **machine})
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(rows, indent=1))
        plot(rows, out / "bench.png", f"{args.model}, {machine['threads']} threads, {machine['cpu']}")
    return rows


def add_parser(sub, model_arguments) -> None:
    p = sub.add_parser("bench", help="prefill and decode speed and memory, base vs merged, beside the ideal",
                       description="Time base and merged on the same inputs: prefill latency, decode tokens/s, "
                                   "KV-cache bytes and peak memory, with the ideal speedup from counting the work.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    merge_settings.add_arguments(p)
    p.add_argument("--cutoffs", type=merge_settings.ints, help="sweep these cutoffs (default: four across the "
                                                                 "depth, unless --layer-cutoff or --config)")
    p.add_argument("--lengths", type=merge_settings.ints, help="default 256,...,4096")
    p.add_argument("--runs", type=int, default=5, help="timed runs per setting, after a warm-up (default 5)")
    p.add_argument("--decode-tokens", type=int, default=64, help="new tokens for the decode rate (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="folder for bench.json and bench.png")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")

    def cmd(args):
        if args.runs < 1:
            raise ValueError("--runs must be at least 1")
        rows = run(args)
        if args.json:
            print(json.dumps(rows))
        else:
            print_table(rows)

    p.set_defaults(func=cmd)
