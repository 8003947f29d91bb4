"""Several questions on one document, asked one after another: how many each way answers, per question and per
document.

A document states six doors' four-digit codes spread evenly through `eval`'s filler text (the `facts` task's
sentences, --length tokens in all); it is read once, then all six doors are asked in turn, in an order shuffled
per document, each question continuing the same kept context:

    base      the base model, its full KV cache of the context reused (a copy per question)
    once      the model's defaults, the context shortened once without the questions (`slerpmerge.prefill`)
    reselect  the defaults, the context kept for reselection (`prefill(..., reselect=True)`): each question
              ranks the context's tokens with its own queries

For reselect the last question of each document is also asked alone on a fresh read of the context; its row says
whether the two answers agree (a question sees the context, never the questions before it). One JSON line per (document, way,
question) to --out; resumes. From the repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python results/shapes/several.py --model smollm2-135m --length 2048 --documents 12 \\
        --out results/shapes/several-smollm2-135m-2048.jsonl
    .venv/bin/python results/shapes/several.py --report results/shapes/several-smollm2-135m-2048.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache

import slerpmerge
from slerpmerge.compat import cache_kwargs
from slerpmerge.evaluate.corpus import begin, read_texts, token_stream
from slerpmerge.evaluate.metrics import wilson
from slerpmerge.evaluate.tasks import DOORS, correct
from slerpmerge.models import BUILTINS, load

WAYS = ("base", "once", "reselect")
NEW_TOKENS = 8


def encode(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]


def document(tokenizer, filler: torch.Tensor, length: int, seed: int) -> tuple[torch.Tensor, list[tuple]]:
    """(1, C) a context of six stated codes in filler, and per door (question ids (1, Q), code), in asking order.
    The context leaves room for the longest question, so that every question fits --length."""
    rng = random.Random(f"several-{seed}")
    doors = rng.sample(DOORS, 6)
    codes = [str(rng.randint(1000, 9999)) for _ in doors]
    questions = [encode(tokenizer, f"\nWhat is the code for the {d} door? The code for the {d} door is")
                 for d in doors]
    pieces = [encode(tokenizer, f"\nThe code for the {d} door is {c}.\n") for d, c in zip(doors, codes)]
    start = begin(tokenizer)
    room = length - start.numel() - sum(p.numel() for p in pieces) - max(q.numel() for q in questions)
    offset = rng.randrange(filler.numel() - length)
    parts, used = [start], 0
    for k, piece in enumerate(pieces):  # the k-th code at depth (k + 0.5) / 6
        before = int(room * (k + 0.5) / 6) - used
        parts += [filler[offset + used:offset + used + before], piece]
        used += before
    parts.append(filler[offset + used:offset + room])
    order = list(range(6))
    rng.shuffle(order)
    return torch.cat(parts)[None], [(k, questions[k][None], codes[k]) for k in order]


def answer(tokenizer, out: torch.Tensor, start: int) -> str:
    return tokenizer.decode(out[0, start:start + NEW_TOKENS], skip_special_tokens=True)


@torch.inference_mode()
def run(args) -> None:
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    defaults = BUILTINS[args.model].defaults
    filler = token_stream(tokenizer, read_texts(None))
    out = Path(args.out)
    done = {(r["document"], r["way"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    one = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for doc in range(args.documents):
        context, asked = document(tokenizer, filler, args.length, doc)
        n = context.shape[1]
        for way in WAYS:
            if (doc, way) in done:
                continue
            rows = []
            if way == "base":
                full = DynamicCache(config=model.config)
                model(context, **cache_kwargs(model, full), use_cache=True, logits_to_keep=1)
                for turn, (k, q, code) in enumerate(asked):
                    ids = torch.cat([context, q], 1)
                    got = model.generate(ids, attention_mask=torch.ones_like(ids),
                                         **cache_kwargs(model, copy.deepcopy(full)), **one)
                    rows.append(dict(turn=turn, fact=k, code=code, answer=answer(tokenizer, got, ids.shape[1])))
            else:
                with slerpmerge.merging(model, **defaults):
                    kept = slerpmerge.prefill(model, context, reselect=way == "reselect")
                    for turn, (k, q, code) in enumerate(asked):
                        got = answer(tokenizer, kept.generate(q, **one), n + q.shape[1])
                        row = dict(turn=turn, fact=k, code=code, answer=got)
                        if way == "reselect" and turn == len(asked) - 1:
                            alone = slerpmerge.prefill(model, context, reselect=True).generate(q, **one)
                            row["same_as_alone"] = answer(tokenizer, alone, n + q.shape[1]) == got
                        rows.append(row)
            with out.open("a") as f:
                for row in rows:
                    f.write(json.dumps(dict(model=args.model, length=n, document=doc, way=way,
                                            correct=correct(row["answer"], (row["code"],)), **row)) + "\n")
            print(f"document {doc} {way}: {sum(correct(r['answer'], (r['code'],)) for r in rows)}/6", flush=True)


def report(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    docs = sorted({r["document"] for r in rows})
    print(f"{rows[0]['model']}, a {rows[0]['length']}-token context, {len(docs)} documents x 6 questions asked in "
          "turn (95 % Wilson intervals)")
    print("| way | all questions | by turn 1-6 (of each document's questions) | by fact, first to last in the text "
          "| documents with all 6 | with 4 or more |")
    print("| --- | --- | --- | --- | --- | --- |")
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        if not mine:
            continue
        right = sum(r["correct"] for r in mine)
        lo, hi = wilson(right, len(mine))
        turns = " / ".join(str(sum(r["correct"] for r in mine if r["turn"] == t)) for t in range(6))
        facts = " / ".join(str(sum(r["correct"] for r in mine if r["fact"] == k)) for k in range(6))
        per_doc = defaultdict(int)
        for r in mine:
            per_doc[r["document"]] += r["correct"]
        whole = sum(v == 6 for v in per_doc.values())
        most = sum(v >= 4 for v in per_doc.values())
        print(f"| {way} | {right}/{len(mine)} ({lo:.2f}-{hi:.2f}) | {turns} | {facts} | {whole}/{len(per_doc)} "
              f"| {most}/{len(per_doc)} |")
    alone = [r["same_as_alone"] for r in rows if "same_as_alone" in r]
    if alone:
        print(f"\nreselect: {sum(alone)}/{len(alone)} last answers equal the same question asked alone")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--documents", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--report")
    args = p.parse_args()
    if args.report:
        report(args.report)
    else:
        run(args)


if __name__ == "__main__":
    main()
