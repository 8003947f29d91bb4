"""The base model, slerpmerge settings and kvpress's presses on pass-key items with the question after the context
(and in a chat turn), item by item: `eval --shapes` with the presses beside, so run in the peers environment.

Shapes are `slerpmerge.evaluate.shapes`'s: in `later` the context is shortened in its own prefill (by the merge or by a
press), then the question and the answer run against what it left, at their true positions (kvpress's protocol).
Items: `eval`'s `once` items (a five-digit key stated once at a depth of the filler) or `word` items (a secret word),
seed 0. A press runs in `later`
only, at the compression ratio that leaves the KV bytes of the built-in default. Rows go to <out>/<model>.jsonl, one
per (shape, length, method, item); a rerun skips rows already there. From the repository root:

    .venv-peers/bin/python docs/later/asklater.py --model smollm2-135m --length 2048 --items 24 \
        --config docs/later/settings/keynorm-late.json --config docs/later/settings/keynorm-early.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import DynamicCache

import slerpmerge
from slerpmerge.bench.timing import cache_bytes
from slerpmerge.compat import cache_kwargs
from slerpmerge.evaluate.corpus import read_texts, token_stream
from slerpmerge.evaluate.shapes import answer, shaped
from slerpmerge.evaluate.tasks import TASKS, correct
from slerpmerge.methods import METHODS
from slerpmerge.models import BUILTINS, load
from slerpmerge.settings import label

ANSWER_TOKENS = 8

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "peers"))
try:  # the peers environment
    from compare import pressed
except ImportError:
    pressed = None


@torch.inference_mode()
def press_answer(model, context, question, press: str, ratio: float) -> list[int]:
    """A press on the context's prefill; the question and answer run against what it left."""
    with pressed(model, press, ratio):
        cache = DynamicCache(config=model.config)
        model(context, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
        ids = torch.cat([context, question], 1)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, cache),
                             max_new_tokens=ANSWER_TOKENS, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@torch.inference_mode()
def kv_fraction(model, patch: dict, context: torch.Tensor) -> float:
    """The KV bytes a setting's prefill of ``context`` leaves, as a fraction of the base model's."""
    base = DynamicCache(config=model.config)
    model(context, **cache_kwargs(model, base), use_cache=True, logits_to_keep=1)
    with slerpmerge.merging(model, **patch):
        short = slerpmerge.prefill(model, context).cache
    return cache_bytes(short) / cache_bytes(base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--task", default="once", choices=["once", "word"])
    p.add_argument("--shapes", default="later,chat")
    p.add_argument("--config", action="append", default=[], help="a slerpmerge setting (JSON); may repeat")
    p.add_argument("--presses", default="snapkv,streaming,expected,knorm")
    p.add_argument("--out", default="docs/later")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load(args.model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    stream = token_stream(tokenizer, read_texts(None))
    items = TASKS[args.task](tokenizer, stream, args.length, args.items, 0)
    settings = [("default", dict(BUILTINS[args.model].defaults))]
    settings += [(Path(f).stem, json.loads(Path(f).read_text())) for f in args.config]
    out = Path(args.out) / f"{args.model}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r.get("task", "once"), r["shape"], r["length"], r["method"], r["item"])
            for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    for shape in args.shapes.split(","):
        methods = [{"name": "base"}] + [{"name": f"slerpmerge {n}" if s["method"] in METHODS else n, "patch": s,
                                         "setting": label(s)} for n, s in settings]
        if shape == "later" and pressed is not None:
            context = items[0].context
            ratio = round(1 - kv_fraction(model, settings[0][1], context), 3)
            methods += [{"name": f"kvpress {p_} {ratio:.2f}", "press": p_, "ratio": ratio}
                        for p_ in args.presses.split(",")]
        for i, item in enumerate(items):
            context, question = shaped(tokenizer, item, shape)
            for m in methods:
                if (args.task, shape, args.length, m["name"], i) in done:
                    continue
                if "press" in m:
                    tokens = press_answer(model, context, question, m["press"], m["ratio"])
                else:
                    tokens = answer(model, context, question, m.get("patch", {"method": "base"}), shape,
                                    ANSWER_TOKENS, tokenizer.pad_token_id)[0]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                row = {"model": args.model, "task": args.task, "shape": shape, "length": args.length, "method": m["name"],
                       "setting": m.get("setting"), "ratio": m.get("ratio"), "item": i, "depth": item.depth,
                       "answer": text, "correct": correct(text, item.answers)}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{shape} item {i}", flush=True)


if __name__ == "__main__":
    main()
