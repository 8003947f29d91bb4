"""Evaluation: what merging costs in quality and buys in speed, beside the simple baselines.

    slerpmerge eval --out results/         # or --quick for a few minutes on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

from .corpus import read_texts
from .plots import plot_all
from .sweep import BASELINES, Setting, grid, summarise, sweep, write_summary

__all__ = ["Setting", "grid", "sweep", "summarise", "write_summary", "plot_all", "read_texts", "run", "add_parser"]

PATCH_METHODS = ("slerp", "mean", "drop")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _keeps(s: str) -> list[tuple[int, int]]:
    """'0:0,4:32' -> [(0, 0), (4, 32)]"""
    try:
        return [tuple(int(v) for v in pair.split(":")) for pair in s.split(",") if pair]
    except ValueError:
        raise ValueError(f"--keeps takes START:END pairs separated by commas, got {s!r}") from None


def fractions_of(num_layers: int, fractions) -> list[int]:
    return sorted({min(num_layers - 1, max(0, round(num_layers * f))) for f in fractions})


def plan(args, num_layers: int) -> dict:
    """The sweep's shape: quick presets, overridden by explicit flags."""
    if args.quick:
        shape = dict(lengths=[256], cutoffs=fractions_of(num_layers, (0.2, 0.5, 0.75)), keeps=[(0, 0), (4, 32)],
                     windows=6, gen_tokens=8, tasks=["passkey", "qa"], task_lengths=[1024], task_items=3)
    else:
        shape = dict(lengths=[64, 256, 1024], cutoffs=fractions_of(num_layers, (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)),
                     keeps=[(0, 0), (4, 32)], windows=16, gen_tokens=16, tasks=["passkey", "qa"],
                     task_lengths=[1024, 2048], task_items=6)
    for key in shape:
        value = getattr(args, key, None)
        if value is not None:
            shape[key] = value
    return shape


def run(args) -> list[dict]:
    import torch
    from tqdm import tqdm

    from ..models import load

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    texts = read_texts(args.corpus, args.field)
    methods = args.methods or [*PATCH_METHODS, *BASELINES]
    for m in methods:
        if m not in (*PATCH_METHODS, *BASELINES):
            raise ValueError(f"--methods takes {', '.join((*PATCH_METHODS, *BASELINES))}; got {m!r}")
    for name in args.model.split(","):
        model, tokenizer = load(name, cache=args.cache_dir)
        shape = plan(args, model.config.num_hidden_layers)
        settings = grid(shape["cutoffs"], methods, shape["keeps"], args.positions)
        settings += [Setting.from_dict(json.loads(line)) for line in (args.extra_setting or [])]
        settings += [Setting.from_patch_kwargs(json.loads(Path(f).read_text())) for f in (args.config or [])]
        total = (len(shape["lengths"]) * shape["windows"] * len(settings)
                 + len(shape["tasks"]) * len(shape["task_lengths"]) * shape["task_items"] * (len(settings) + 1))
        with tqdm(total=total, desc=f"eval {name}", unit="run") as bar:
            sweep(name, model, tokenizer, texts, out, shape["lengths"], settings, shape["windows"],
                  shape["gen_tokens"], shape["tasks"], shape["task_lengths"], shape["task_items"], seed=args.seed,
                  progress=bar)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = summarise(rows, args.seed)
    write_summary(summary, out / "summary.csv")
    plot_all(summary, out)
    return summary


def print_summary(summary: list[dict]) -> None:
    print(f"{'model':14}{'kind':11}{'length':>7}  {'setting':34}{'S_merged':>9}{'top1':>7}{'kl':>8}{'gen':>6}"
          f"{'acc':>6}{'speedup':>9}")
    for r in summary:
        setting = Setting.from_dict({k: r[k] for k in ("method", "layer_cutoff", "keep_start", "keep_end",
                                                       "positions")} | {"extra": json.loads(r["extra"] or "{}")}).label
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else format("-", spec[0] + spec[1:].split(".")[0])  # noqa: E731
        print(f"{r['model']:14}{r['kind']:11}{r['length']:>7}  {setting:34}{r['merged_length']:>9.0f}"
              f"{fmt(r.get('top1_agree'), '>7.2f')}{fmt(r.get('kl'), '>8.3f')}{fmt(r.get('gen_match'), '>6.2f')}"
              f"{fmt(r.get('accuracy'), '>6.2f')}{fmt(r.get('speedup'), '>8.2f')}x")


def add_parser(sub, model_arguments) -> None:
    import os

    p = sub.add_parser("eval", help="quality against the base model and the baselines, with plots",
                       description="Sweep models x lengths x cutoffs x methods x keeps on a corpus; compare each "
                                   "with the base model on the same windows and tasks. Writes results.jsonl, "
                                   "summary.csv and PNG plots to --out; a killed sweep resumes.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    p.add_argument("--out", required=True, help="folder for results.jsonl, summary.csv and the plots")
    p.add_argument("--quick", action="store_true", help="a small sweep that runs in a few minutes on 2 cores")
    p.add_argument("--corpus", help=".txt, .jsonl or a folder of them (default: Python's pydoc topics)")
    p.add_argument("--field", default="text", help="the text field of .jsonl lines")
    p.add_argument("--lengths", type=_ints)
    p.add_argument("--cutoffs", type=_ints)
    p.add_argument("--methods", type=lambda s: s.split(","), help="slerp,mean,drop,truncate (default: all)")
    p.add_argument("--keeps", type=_keeps, help="keep_start:keep_end pairs, e.g. 0:0,4:32")
    p.add_argument("--positions", type=lambda s: s.split(","), default=["original"])
    p.add_argument("--windows", type=int, help="windows per length")
    p.add_argument("--gen-tokens", type=int, help="greedy tokens compared with the base model's")
    p.add_argument("--tasks", type=lambda s: [t for t in s.split(",") if t], help="passkey,qa ('' for none)")
    p.add_argument("--task-lengths", type=_ints)
    p.add_argument("--task-items", type=int)
    p.add_argument("--extra-setting", action="append", help="one more setting as JSON (Setting fields)")
    p.add_argument("--config", action="append", help="JSON file of patch settings (from `slerpmerge tune`) to "
                                                     "evaluate beside the grid; may repeat")
    p.add_argument("--seed", type=int, default=0)

    def cmd(args):
        print_summary(run(args))
        print(f"\nresults in {args.out}: results.jsonl, summary.csv, *.png")

    p.set_defaults(func=cmd)
