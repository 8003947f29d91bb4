"""The base model, slerpmerge settings and kvpress's presses on `eval`'s retrieval items in each shape, item by item:
`eval --shapes` with the presses beside, so run in the peers environment.

Shapes are `slerpmerge.evaluate.shapes`'s. In `later` the context is shortened in its own prefill (by the merge or by
a press), then the question and the answer run against what it left, at their true positions (kvpress's protocol).
In `end` and `chat` a press compresses the prefill of the whole prompt but its last token (so a question-aware press
sees the question), and that token and the answer run against what it left. Items: `eval`'s items of a task, seed 0.
Presses run at the compression ratio that leaves the KV bytes of the built-in default. `--config base` and `--config
default` run the base model and the built-in default. Rows go to <out>/<model>.jsonl, one per (task, shape, length,
method, item); a rerun skips rows already there. From the repository root:

    .venv-peers/bin/python results/shapes/asklater.py --model smollm2-135m --length 2048 --items 24 --task once \
        --config base --config default --config results/shapes/settings/keynorm-early.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from slerpmerge.evaluate.corpus import read_texts, token_stream
from slerpmerge.evaluate.shapes import answer, shaped
from slerpmerge.evaluate.tasks import TASKS, correct
from slerpmerge.methods import METHODS
from slerpmerge.models import BUILTINS, load
from slerpmerge.settings import label

ANSWER_TOKENS = 8

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kvpress"))
try:  # the peers environment
    from compare import decode, kv_fraction, pressed, read
except ImportError:
    pressed = None


@torch.inference_mode()
def press_answer(model, context, question, shape: str, press: str, ratio: float) -> list[int]:
    """A press on the context's prefill (in `end` and `chat`: the whole prompt but its last token); the rest and the
    answer run against what it left, at their true positions. `model.generate` would not do: it counts the tokens
    a cache has seen by its length, so it would feed the context's pressed-out tail again, uncompressed."""
    if shape != "later":
        prompt = torch.cat([context, question], 1)
        context, question = prompt[:, :-1], prompt[:, -1:]
    with pressed(model, press, ratio):
        logits, cache, seen = read(model, context, question)
        kept = held(cache) - question.shape[1]
        tokens = decode(model, logits, cache, seen, ANSWER_TOKENS)
    if not 0 < kept < context.shape[1] or held(cache) != kept + question.shape[1] + ANSWER_TOKENS - 1:
        raise RuntimeError(f"the press left {kept} of {context.shape[1]} context entries and the cache holds "
                           f"{held(cache)}: not a pressed context followed by the question and answer")
    return tokens


def held(cache) -> int:
    """The entries of the cache's longest layer (on Gemma 3 a pressed full-attention one, not a sliding one)."""
    return max(layer.keys.shape[-2] for layer in cache.layers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--task", default="once", choices=[t for t in TASKS if t != "qa"])
    p.add_argument("--shapes", default="end,chat,later")
    p.add_argument("--config", action="append", default=[],
                   help="a slerpmerge setting (JSON file), `base` or `default` (the built-in); may repeat")
    p.add_argument("--presses", default="snapkv,streaming,expected,knorm")
    p.add_argument("--out", default="results/shapes")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    stream = token_stream(tokenizer, read_texts(None))
    items = TASKS[args.task](tokenizer, stream, args.length, args.items, 0)
    default = dict(BUILTINS[args.model].defaults)
    named = {"base": {"method": "base"}, "default": default}
    settings = [(f, named[f]) if f in named else (Path(f).stem, json.loads(Path(f).read_text())) for f in args.config]
    out = Path(args.out) / f"{args.model}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r.get("task", "once"), r["shape"], r["length"], r["method"], r["item"])
            for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    ratio = round(1 - kv_fraction(model, default, items[0].context), 3) if pressed is not None else None
    for shape in args.shapes.split(","):
        methods = [{"name": "base"} if n == "base" else
                   {"name": f"slerpmerge {n}" if s["method"] in METHODS else n, "patch": s, "setting": label(s)}
                   for n, s in settings]
        if pressed is not None:
            methods += [{"name": f"kvpress {p_} {ratio:.2f}", "press": p_, "ratio": ratio}
                        for p_ in args.presses.split(",") if p_]
        for i, item in enumerate(items):
            context, question = shaped(tokenizer, item, shape)
            for m in methods:
                if (args.task, shape, args.length, m["name"], i) in done:
                    continue
                if "press" in m:
                    tokens = press_answer(model, context, question, shape, m["press"], m["ratio"])
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
