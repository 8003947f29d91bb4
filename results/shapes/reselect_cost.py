"""What a question asked after a kept context costs: time to its first token, and the bytes each way keeps per context.

Four ways to answer a question (at most 32 tokens) about a context of --length tokens:

    scratch   the base model reads context + question from scratch
    reuse     the base model continues a copy of the context's full KV cache (what a cache-keeping engine does)
    once      `slerpmerge.prefill` with the model's defaults: the context merged once, the question continues it
    reselect  `slerpmerge.prefill(..., reselect=True)`: each question ranks and keeps its own context tokens

Each way answers through `generate(max_new_tokens=1)` (the prefilled ways on a copy of their cache, as
`Context.generate` and a reused cache need), so every column pays the same overheads. The context's own prefill is
timed once per way and reported apart. One warm-up round, then --runs rounds, the ways interleaved in each round so
that drift on the machine hits all alike; medians. From the repository root, alone on the machine:

    HF_HUB_OFFLINE=1 .venv/bin/python results/shapes/reselect_cost.py --model smollm2-135m --length 4096 --threads 2 \\
        --runs 5 --out results/shapes/reselect-cost-smollm2-135m.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
from transformers.cache_utils import DynamicCache

import slerpmerge
from slerpmerge.bench.timing import cache_bytes
from slerpmerge.compat import cache_kwargs
from slerpmerge.data import long_document
from slerpmerge.models import BUILTINS, load

QUESTIONS = [" Question: In which year was the lighthouse built? Answer:",
             " Question: Who ran the harbour office? Answer:",
             " Question: What did the town export most? Answer:",
             " Question: When did the lighthouse stop working? Answer:"]
WAYS = ("scratch", "reuse", "once", "reselect")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", help="JSON lines: one per way, with every timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    patched = slerpmerge.patch(load(args.model)[0], **BUILTINS[args.model].defaults)  # a second copy, patched
    text = long_document()
    while len(tokenizer(text).input_ids) < args.length:
        text += "\n\n" + long_document()
    context = tokenizer(text, return_tensors="pt").input_ids[:, :args.length]
    questions = [tokenizer(q, return_tensors="pt", add_special_tokens=False).input_ids for q in QUESTIONS]
    assert all(q.shape[1] <= 32 for q in questions)
    one = dict(max_new_tokens=1, do_sample=False)

    with torch.inference_mode():
        full = DynamicCache(config=model.config)
        kept = {}
        prefill_s = {"scratch": None,
                     "reuse": timed(lambda: model(context, **cache_kwargs(model, full), use_cache=True,
                                                  logits_to_keep=1)),
                     "once": timed(lambda: kept.__setitem__("once", slerpmerge.prefill(patched, context))),
                     "reselect": timed(lambda: kept.__setitem__("reselect", slerpmerge.prefill(patched, context,
                                                                                                reselect=True)))}
        kept_bytes = {"scratch": 0, "reuse": cache_bytes(full), "once": kept["once"].nbytes(),
                      "reselect": kept["reselect"].nbytes()}

        def ask(way: str, question: torch.Tensor) -> None:
            if way == "scratch":
                model.generate(torch.cat([context, question], 1), **one)
            elif way == "reuse":
                cache = copy.deepcopy(full)
                model.generate(torch.cat([context, question], 1), **cache_kwargs(model, cache), **one)
            else:
                kept[way].generate(question, **one)

        times = {way: [] for way in WAYS}
        for run in range(args.runs + 1):  # the first round warms up
            for way in WAYS:
                question = questions[run % len(questions)]
                seconds = timed(lambda: ask(way, question))
                if run:
                    times[way].append(seconds)

    base = statistics.median(times["scratch"])
    rows = []
    print(f"{args.model}, context {args.length} tokens, questions of {min(q.shape[1] for q in questions)}-"
          f"{max(q.shape[1] for q in questions)} tokens; {args.threads} threads, {args.runs} runs after a warm-up; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'way':<10}{'TTFT s (median)':>17}{'vs scratch':>12}{'context prefill s':>19}{'kept MiB':>10}"
          f"{'of full KV':>12}")
    for way in WAYS:
        median = statistics.median(times[way])
        row = dict(model=args.model, length=args.length, way=way, threads=args.threads, ttft_s=times[way],
                   ttft_median_s=median, prefill_s=prefill_s[way], kept_bytes=kept_bytes[way],
                   settings=BUILTINS[args.model].defaults if way in ("once", "reselect") else None)
        rows.append(row)
        prefill = "-" if prefill_s[way] is None else f"{prefill_s[way]:.3f}"
        print(f"{way:<10}{median:>17.4f}{base / median:>11.2f}x{prefill:>19}{kept_bytes[way] / 2**20:>10.1f}"
              f"{kept_bytes[way] / kept_bytes['reuse']:>12.2f}")
    if args.out:
        with open(args.out, "w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
