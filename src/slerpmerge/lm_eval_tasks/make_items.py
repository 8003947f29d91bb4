"""Write longctx.jsonl: `slerpmerge eval`'s long-context items as text, for the harness tasks in this folder.

    python -m slerpmerge.lm_eval_tasks.make_items [--length 1024] [--items 5] [--model smollm2-135m]

The file is longctx.jsonl for the default model (smollm2-135m) and longctx-<model>.jsonl for another built-in
(longctx-gemma3-270m.jsonl), where the tasks look for that model's items (utils.py).

The items are exactly those `slerpmerge eval --tasks once,passkey,word,facts --task-lengths 1024 --task-items 5`
builds (the same tokenizer, the default corpus and seed 0), decoded to text. The harness re-encodes the text;
`tokens` and `roundtrip` record whether that gives back the very ids `slerpmerge eval` feeds (filler starts
mid-word, so a few items may differ by a token at a seam). Deterministic: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("once", "passkey", "word", "facts")


def items(tokenizer, length: int, count: int, seed: int = 0) -> list[dict]:
    from slerpmerge.evaluate.corpus import read_texts, token_stream
    from slerpmerge.evaluate.tasks import TASKS as BUILDERS

    stream = token_stream(tokenizer, read_texts(None))
    rows = []
    for task in TASKS:
        for i, item in enumerate(BUILDERS[task](tokenizer, stream, length, count, seed)):
            ids = item.ids[0].tolist()
            if ids[0] == tokenizer.bos_token_id and tokenizer("").input_ids[:1] == ids[:1]:
                ids = ids[1:]  # the tokenizer's own BOS (Gemma 3's) is the harness's to add, as it adds it to any text
            text = tokenizer.decode(ids)
            again = tokenizer(text, add_special_tokens=False).input_ids
            rows.append({"task": task, "item": i, "length": length, "depth": item.depth, "prompt": text,
                         "answers": list(item.answers), "tokens": len(again), "roundtrip": again == ids})
    return rows


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    from slerpmerge.models import DEFAULT_MODEL, resolve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="whose tokenizer measures the lengths")
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--items", type=int, default=5, help="items per task")
    p.add_argument("--out", type=Path, help="default: longctx.jsonl here, longctx-<model>.jsonl for a model "
                   "other than the default")
    args = p.parse_args(argv)
    if args.out is None:
        name = "longctx.jsonl" if args.model == DEFAULT_MODEL else f"longctx-{Path(args.model).name}.jsonl"
        args.out = Path(__file__).parent / name
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model), local_files_only=True)
    rows = items(tokenizer, args.length, args.items)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} items in {args.out}; {sum(r['roundtrip'] for r in rows)} re-encode to the same ids")


if __name__ == "__main__":
    main()
