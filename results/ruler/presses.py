"""kvpress's presses on RULER's items, beside `slerpmerge eval --suite ruler`'s rows of the same model and length.

Run in the peers environment (kvpress 0.5.5, transformers 5.2.0, RULER's package for its scoring), after the eval
environment's `slerpmerge eval --suite ruler` has made the items (they are read from the cache folder). A press
compresses the prefill of the whole prompt but its last token, so a question-aware press (SnapKV, window 32) sees
the question; that token and the answer run against what it left, at their true positions, greedy until the end
token or RULER's budget for the task, as `eval` decodes. The press keeps the fraction of KV bytes that the built-in
default leaves after its own prefill of the first item (measured, not counted). Rows go to <out>/presses.jsonl in
`eval`'s format; a rerun skips rows already there. From the repository root:

    .venv-peers/bin/python results/ruler/presses.py --model smollm2-135m --length 4096 --items 5 \\
        --out results/ruler/smollm2-135m-4096
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from slerpmerge.compat import cache_kwargs
from slerpmerge.evaluate import ruler
from slerpmerge.evaluate.runs import key
from slerpmerge.models import BUILTINS, is_chat, load, resolve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kvpress"))
from compare import kv_fraction, pressed, read  # noqa: E402  (results/kvpress/compare.py: the press hooks, Gemma 3 included)


@torch.inference_mode()
def press_answer(model, ids: torch.Tensor, press: str, ratio: float, new_tokens: int, eos: set[int]):
    """Greedy answer tokens after a pressed prefill of all of ``ids`` (1, S) but its last token; and the entries the
    press left in the cache's longest layer (on Gemma 3 a pressed full-attention one)."""
    with pressed(model, press, ratio):
        logits, cache, seen = read(model, ids[:, :-1], ids[:, -1:])
        kept = max(layer.keys.shape[-2] for layer in cache.layers) - 1
        tokens = [int(logits.argmax())]
        while tokens[-1] not in eos and len(tokens) < new_tokens:
            out = model(torch.tensor([[tokens[-1]]]), position_ids=torch.tensor([[seen + len(tokens) - 1]]),
                        **cache_kwargs(model, cache), use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
    if not 0 < kept < ids.shape[1] - 1:
        raise RuntimeError(f"the press left {kept} of {ids.shape[1] - 1} entries: it did not press the prompt")
    return tokens, kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a built-in name")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--items", type=int, default=5, help="items a task")
    p.add_argument("--presses", default="snapkv,streaming")
    p.add_argument("--out", required=True, help="the eval run's folder")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    folder = resolve(args.model)
    chat = is_chat(tokenizer, args.model)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = Path(args.out) / "presses.jsonl"
    done = {(r["kind"], r["item"], r["setting"]) for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else set()
    first = ruler.items(tokenizer, folder, ruler.TASKS[0], args.length, args.items, 0, chat)[0]
    ratio = round(1 - kv_fraction(model, BUILTINS[args.model].defaults, first.ids), 3)
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    for task in ruler.TASKS:
        items = ruler.items(tokenizer, folder, task, args.length, args.items, 0, chat)
        for i, item in enumerate(items):
            for press in args.presses.split(","):
                setting = key({"method": "kvpress", "press": press, "ratio": ratio})
                if (task, i, setting) in done:
                    continue
                tokens, kept = press_answer(model, item.ids, press, ratio, ruler.new_tokens(task), eos)
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                row = {"model": args.model, "suite": "ruler", "kind": task, "length": args.length, "item": i,
                       "setting": setting, "method": "kvpress", "merged_length": kept,
                       "tokens": item.ids.shape[1], "score": ruler.score(task, text, item.answers),
                       "answer": text.strip(), "references": list(item.answers), "command": command}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{task} item {i}", flush=True)


if __name__ == "__main__":
    main()
