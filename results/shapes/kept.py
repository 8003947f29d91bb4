"""Where a stated fact goes in the built-in default's prefill: whether each of its tokens is kept exact or merged
(the span it is merged into), its rank under the ranking the plan reads, and how many original tokens the last
`sliding_window` entries after the cutoff span (what a sliding layer there sees from the end of the prompt).

One row per (shape, item) to <out>; `eval`'s items of a task, seed 0. From the repository root:

    .venv/bin/python results/shapes/kept.py --model gemma3-270m --length 4096 --task once \
        --out results/shapes/kept-gemma3-270m-4096.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch

import slerpmerge.prefill as prefill
from slerpmerge.evaluate.corpus import read_texts, token_stream
from slerpmerge.evaluate.shapes import shaped
from slerpmerge.evaluate.tasks import TASKS
from slerpmerge.models import BUILTINS, load
from slerpmerge.patching import merging


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--task", default="once")
    p.add_argument("--shapes", default="end,later")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load(args.model)
    window = model.config.sliding_window
    items = TASKS[args.task](tokenizer, token_stream(tokenizer, read_texts(None)), args.length, args.items, 0)
    caught = {}
    merge = prefill.merge_sequence

    def spy(*a, **k):  # the cutoff's merge, as the hooks call it
        caught["merged"], caught["scores"] = merge(*a, **k), k.get("scores")
        return caught["merged"]

    prefill.merge_sequence = spy
    with open(args.out, "w") as out:
        for shape in args.shapes.split(","):
            for i, item in enumerate(items):
                context, question = shaped(tokenizer, item, shape)
                ids = context if shape == "later" else torch.cat([context, question], 1)  # what the merge reads
                with merging(model, **BUILTINS[args.model].defaults), torch.inference_mode():
                    model(ids, logits_to_keep=1)
                plan = caught["merged"].plan
                first, last = plan.first[0], plan.last[0]  # (S',) the span each entry stands for
                span = last - first + 1
                owner = torch.repeat_interleave(torch.arange(first.numel()), span)  # (S,) entry of each token
                rank = caught["scores"][0].argsort(descending=True).argsort()  # (S,) 0 = ranked first
                entries = first.numel()
                row = {"model": args.model, "task": args.task, "shape": shape, "length": args.length, "item": i,
                       "entries": entries, "exact": int((span == 1).sum()),
                       "fact_spans": [[int(span[owner[t]]) for t in place] for place in item.fact],
                       "fact_rank": [max(int(rank[t]) for t in place) for place in item.fact],
                       "window_spans": int(ids.shape[1] - first[max(0, entries - window)])}
                out.write(json.dumps(row) + "\n")
                print(shape, i, row["fact_spans"], row["fact_rank"], row["window_spans"], flush=True)


if __name__ == "__main__":
    main()
