"""`slerpmerge eval`: quality against the base model and the baselines, speed measured apart, with plots."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from ..methods import METHODS
from ..settings import cutoff_grid, ints, read_config
from .corpus import read_texts
from .plots import plot_all
from .runs import BASELINES, check, key
from .summary import print_summary, summarise, write_csv
from .ruler import TASKS as RULER_TASKS, package as ruler_package
from .sweep import read_rows, ruler_sweep, speed_sweep, sweep
from .shapes import SHAPES
from .tasks import TASKS

KEEPS = dict(keep_start=4, keep_end=32)


def default_settings(num_layers: int, quick: bool, methods=None) -> list[dict]:
    """SLERP pairs, guided, prune and selection (all heads; `slerpmerge calibrate` finds better ones) at cutoffs
    across the depth and two targets, and truncation at targets that span the same speeds; keep 4 + 32."""
    cutoffs = cutoff_grid(num_layers, (0.5,) if quick else (0.3, 0.5, 0.7))
    targets = (0.25,) if quick else (0.25, 0.5)
    out = []
    for c in cutoffs:
        out.append(dict(method="slerp", layer_cutoff=c, **KEEPS))
        for t in targets:
            out += [dict(method=m, layer_cutoff=c, target=t, window=8, spread=8, **KEEPS)
                    for m in ("guided", "prune", "select")]
    out += [dict(method="truncate", target=t, keep_start=4) for t in ((0.25, 0.5) if quick else
                                                                        (0.25, 0.4, 0.5, 0.6, 0.8))]
    return [s for s in out if methods is None or s["method"] in methods]


def shape(args) -> dict:
    """The sweep's sizes: presets, overridden by explicit flags."""
    if getattr(args, "suite", "tasks") == "ruler":
        return ruler_shape(args)
    if args.quick:
        out = dict(lengths=[256], windows=4, gen_tokens=8, tasks=["once"], task_lengths=[512], task_items=4,
                   speed_runs=2, shapes=["end"])
    else:
        out = dict(lengths=[1024, 2048], windows=24, gen_tokens=16, tasks=["once", "word", "facts", "passkey", "qa"],
                   task_lengths=[2048], task_items=24, speed_runs=5, shapes=["end"])
    return overridden(args, out, TASKS, SHAPES)


def overridden(args, preset: dict, tasks, shapes, suite: str = "", why: str = "") -> dict:
    """A preset's sizes with the flags given in ``args`` over them; tasks and shapes outside those allowed raise
    (``suite``: the flag naming the suite, for the messages)."""
    out = {k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in preset.items()}
    for task in out["tasks"]:
        if task not in tasks:
            raise ValueError(f"{suite}--tasks takes {', '.join(tasks)}; got {task!r}")
    for s in out["shapes"]:
        if s not in shapes:
            raise ValueError(f"{suite}--shapes takes {', '.join(shapes)}{why}; got {s!r}")
    return out


def ruler_shape(args) -> dict:
    """RULER's sizes: --lengths are its prompt lengths (with the tokens it generates), --tasks a choice of its
    tasks; no prose windows."""
    out = dict(lengths=[4096], tasks=list(RULER_TASKS), task_items=2 if args.quick else 20,
               speed_runs=2 if args.quick else 5, shapes=["end"])
    return overridden(args, out, RULER_TASKS, ("end", "later", "reselect"), "--suite ruler ",
                      " (its prompts are in the model's chat template already)")


def command_line() -> str:
    """The command this process runs, as a user typed it (`slerpmerge eval ...`), for the rows."""
    argv = sys.argv
    if Path(argv[0]).name in ("slerpmerge", "__main__.py"):
        argv = ["slerpmerge", *argv[1:]]
    return shlex.join(argv)


def run_ruler(args, model_name: str, model, tokenizer, size: dict, settings: list[dict]) -> None:
    from tqdm import tqdm

    from ..models import is_chat, resolve

    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max(size["lengths"]) > limit:
        raise ValueError(f"{model_name} reads at most {limit} tokens; --lengths asks for {max(size['lengths'])}")
    others = [s for s in settings if s["method"] != "base"]
    if size["speed_runs"]:
        with tqdm(total=len(size["lengths"]) * size["speed_runs"] * (len(others) + 1), desc=f"speed {model_name}",
                  unit="run") as bar:
            speed_sweep(model_name, model, tokenizer, Path(args.out), settings, size["lengths"], size["speed_runs"],
                        bar)
    total = len(size["lengths"]) * len(size["tasks"]) * len(size["shapes"]) * size["task_items"] * (len(others) + 1)
    with tqdm(total=total, desc=f"ruler {model_name}", unit="run") as bar:
        ruler_sweep(model_name, model, tokenizer, resolve(model_name, args.cache_dir), Path(args.out), settings,
                    tasks=size["tasks"], lengths=size["lengths"], count=size["task_items"], seed=args.seed,
                    chat=is_chat(tokenizer, model_name), shapes=size["shapes"], command=command_line(),
                    progress=bar, cache=args.cache_dir)


def settings_of(args, num_layers: int) -> list[dict]:
    if args.settings:
        lines = Path(args.settings).read_text().splitlines()
        chosen = [json.loads(line) for line in lines if line.strip() and not line.startswith("#")]
    else:
        chosen = default_settings(num_layers, args.quick, args.methods)
    chosen += [read_config(f) for f in args.config or []]
    unique = {key(check(s)): check(s) for s in chosen}
    return list(unique.values())


def run(args) -> list[dict]:
    import torch
    from tqdm import tqdm

    from ..models import check_length, load

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    texts = read_texts(args.corpus, args.field)
    size = shape(args)
    if getattr(args, "suite", "tasks") == "ruler":
        ruler_package()  # not installed: say how before loading a model
    for model_name in args.model.split(","):
        model, tokenizer = load(model_name, cache=args.cache_dir)
        if getattr(args, "suite", "tasks") != "ruler":  # RULER's checks its own lengths, answer tokens included
            check_length(model, max(size["lengths"] + size["task_lengths"]) + size["gen_tokens"],
                         "give shorter --lengths and --task-lengths")
        settings = settings_of(args, model.config.num_hidden_layers)
        if getattr(args, "suite", "tasks") == "ruler":
            run_ruler(args, model_name, model, tokenizer, size, settings)
            continue
        others = [s for s in settings if s["method"] != "base"]
        lengths = sorted({*size["lengths"], *size["task_lengths"]})
        if size["speed_runs"]:  # 0: quality only (on a busy machine); measure speed later, quietly
            with tqdm(total=len(lengths) * size["speed_runs"] * (len(others) + 1), desc=f"speed {model_name}",
                      unit="run") as bar:
                speed_sweep(model_name, model, tokenizer, out, settings, lengths, size["speed_runs"], bar)
        total = (len(size["lengths"]) * size["windows"] * len(others)
                 + len(size["tasks"]) * len(size["shapes"]) * len(size["task_lengths"]) * size["task_items"]
                 * (len(others) + 1))
        with tqdm(total=total, desc=f"eval {model_name}", unit="run") as bar:
            sweep(model_name, model, tokenizer, texts, out, settings, lengths=size["lengths"],
                  n_windows=size["windows"], gen_tokens=size["gen_tokens"], tasks=size["tasks"],
                  task_lengths=size["task_lengths"], task_items=size["task_items"], shapes=size["shapes"],
                  seed=args.seed, progress=bar)
    results = read_rows(out / "results.jsonl")[0]  # every row in the folder, other evals' included
    speed_file = out / "speed.jsonl"
    speeds = [json.loads(line) for line in speed_file.read_text().splitlines()] if speed_file.exists() else []
    summary = summarise(results, speeds, args.seed)
    write_csv(summary, out / "summary.csv")
    plot_all(summary, out)
    return summary


def add_parser(sub, model_arguments) -> None:
    p = sub.add_parser("eval", help="quality against the base model and the baselines, speed measured apart",
                       description="Run settings (patch methods and the baselines base, truncate, select) over "
                                   "prose windows and long-context tasks, compare each with the base model on the "
                                   "same windows and items, and measure each setting's prefill speedup on a quiet "
                                   "pass of its own. Writes results.jsonl, speed.jsonl, summary.csv and a plot to "
                                   "--out; a killed run resumes.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    p.add_argument("--out", required=True, help="folder for results.jsonl, speed.jsonl, summary.csv and the plot")
    p.add_argument("--quick", action="store_true", help="a small run: a few minutes on 2 cores")
    p.add_argument("--settings", help="JSON lines, one setting each (patch keyword arguments, or a baseline: "
                                      '{"method": "truncate", "target": 0.5, "keep_start": 4}); default: a grid')
    p.add_argument("--methods", type=lambda s: s.split(","),
                   help=f"only these methods of the default grid ({', '.join([*METHODS, *BASELINES])})")
    p.add_argument("--config", action="append", type=Path, help="a JSON file of patch settings (from `tune`) "
                                                                "to evaluate too; may repeat")
    p.add_argument("--corpus", help=".txt, .jsonl or a folder of them (default: Python's pydoc topics)")
    p.add_argument("--field", default="text", help="the text field of .jsonl lines")
    p.add_argument("--suite", choices=("tasks", "ruler"), default="tasks",
                   help="tasks: prose windows and slerpmerge's own long-context tasks; ruler: NVIDIA's RULER, its 13 "
                        "tasks made by its own code (needs the eval extra), --lengths its prompt lengths "
                        "(default 4096), --tasks a choice of them")
    p.add_argument("--lengths", type=ints, help="prose window lengths (next-token agreement); with --suite ruler "
                                                "RULER's lengths (prompt and generated tokens)")
    p.add_argument("--windows", type=int, help="prose windows per length")
    p.add_argument("--gen-tokens", type=int, help="greedy tokens compared with the base model's")
    p.add_argument("--tasks", type=lambda s: [t for t in s.split(",") if t],
                   help=f"of {', '.join(TASKS)}; with --suite ruler of {', '.join(RULER_TASKS)}")
    p.add_argument("--task-lengths", type=ints)
    p.add_argument("--task-items", type=int, help="items per task and length")
    p.add_argument("--shapes", type=lambda s: [x for x in s.split(",") if x],
                   help=f"where the question sits, of {', '.join(SHAPES)} (default end; later: the context is "
                        "shortened before its question; reselect: the question chooses from a kept context)")
    p.add_argument("--speed-runs", type=int, help="timed prefill runs per setting and length")
    p.add_argument("--seed", type=int, default=0)

    def cmd(args):
        print_summary(run(args))
        print(f"\nresults in {args.out}: results.jsonl, speed.jsonl, summary.csv, *.png")

    p.set_defaults(func=cmd)
