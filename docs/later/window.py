"""An experiment, not a setting: the sliding layers after the cutoff slide over true positions.

The transformers hooks give a sliding layer after the cutoff the model's own mask, which counts cache entries: a
window of W merged entries spans several times W original tokens (docs/design.md, "Sliding windows"). This script
narrows that mask to the entries whose (mean) true position lies within W of the query's, the span the base model's
sliding layers see (with `--entries N`: to the last N entries), and answers `eval`'s items with the built-in
default in each shape. Rows go to
<out>/<model>-window.jsonl, one per (task, shape, length, item, setting); a rerun skips rows already there. From the
repository root:

    .venv/bin/python docs/later/window.py --model gemma3-270m --length 4096 --tasks once --shapes end,later
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import slerpmerge.hooks as hooks
from slerpmerge.evaluate.corpus import read_texts, token_stream
from slerpmerge.evaluate.shapes import answer, shaped
from slerpmerge.evaluate.tasks import TASKS, correct
from slerpmerge.models import BUILTINS, load

ANSWER_TOKENS = 8


def slide_by_position(window: int, entries: bool = False) -> dict:
    """Wrap the hooks' layer arguments so that a sliding layer's mask also needs true distance < ``window`` (with
    ``entries``: fewer than ``window`` cache entries back). Returns the per-stage record of the positions its layers
    were given (cleared by the caller between prompts)."""
    seen: dict = {}  # stage -> (this call, (B, n) true positions of every entry so far)
    given = hooks.Merger._layer_kwargs

    def layer_kwargs(self, k: int, layer_type: str) -> dict:
        out = given(self, k, layer_type)
        if layer_type != "sliding_attention":
            return out
        positions = self.inputs[k].positions.float()  # (B, q): the positions this stage's layers see
        batch, q = positions.shape
        call = (self.call.past, q)
        if seen.get(k, (None,))[0] != call:  # the first layer of this call: record its entries
            before = seen[k][1] if k in seen and self.call.past else positions[:, :0]
            if entries:  # each entry's index in the stage's cache instead of its position
                positions = torch.arange(before.shape[1], before.shape[1] + q, dtype=torch.float).expand(batch, q)
            seen[k] = (call, torch.cat([before, positions], 1))
        keys = seen[k][1]  # (B, n): every entry so far, this call's last
        queries = keys[:, -q:]
        mask = out["attention_mask"]  # (B, 1, q, kv) bool: SDPA's
        if mask is None:  # every entry is inside the model's window: SDPA runs causal, with no mask
            n = keys.shape[1]
            mask = (torch.arange(n - q, n)[:, None] >= torch.arange(n)[None]).expand(batch, 1, q, n)
        if mask.dtype != torch.bool:
            raise ValueError("this experiment reads SDPA's boolean masks")
        near = queries[:, :, None] - keys[:, None, -mask.shape[-1]:] < window  # the cache holds the last kv
        out["attention_mask"] = mask & near[:, None]
        return out

    hooks.Merger._layer_kwargs = layer_kwargs
    return seen


def report(out: Path, model: str) -> None:
    """Each cell's right answers beside `eval`'s base model and default on the same items (docs/later's grids)."""
    default = json.dumps(dict(BUILTINS[model].defaults), sort_keys=True)  # eval's label
    cells: dict = {}
    for length, folder in ((2048, ""), (4096, "-4096")):
        path = out / f"shapes-{model}{folder}" / "results.jsonl"
        for r in map(json.loads, path.read_text().splitlines() if path.exists() else []):
            task, _, shape = r["kind"].partition(":")
            name = "base" if r["setting"] == '{"method": "base"}' else "default" if r["setting"] == default else None
            if name:
                cells.setdefault((task, shape or "end", r["length"]), {}).setdefault(name, {})[r["item"]] = r["correct"]
    for r in map(json.loads, (out / f"{model}-window.jsonl").read_text().splitlines()):
        cells.setdefault((r["task"], r["shape"], r["length"]), {}).setdefault(r["setting"], {})[r["item"]] = r["correct"]
    names = sorted({n for c in cells.values() for n in c} - {"base", "default"})
    print("| task, shape, length | items | base | default |", " | ".join(names), "|")
    for key, c in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        tried = [n for n in names if n in c]
        if not tried:
            continue
        items = sorted(set.intersection(*(set(c[n]) for n in ["base", "default", *tried] if n in c)))
        count = lambda n: str(sum(bool(c[n][i]) for i in items)) if n in c else ""  # noqa: E731
        print(f"| {key[0]}, {key[1]}, {key[2]} | {len(items)} | {count('base')} | {count('default')} |",
              " | ".join(count(n) if n in c else "" for n in names), "|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--tasks", default="once")
    p.add_argument("--shapes", default="end,later")
    p.add_argument("--out", default="docs/later")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--entries", type=int, default=0,
                   help="slide over this many cache entries instead of the model's window in true positions")
    p.add_argument("--report", action="store_true", help="print the cells so far beside eval's and stop")
    args = p.parse_args()
    if args.report:
        return report(Path(args.out), args.model)
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    if model.config._attn_implementation != "sdpa":
        raise SystemExit("this experiment reads SDPA's masks")
    seen = slide_by_position(args.entries or model.config.sliding_window, entries=bool(args.entries))
    name = f"default, sliding over {args.entries} entries" if args.entries else "default, sliding by true position"
    setting = dict(BUILTINS[args.model].defaults)
    out = Path(args.out) / f"{args.model}-window.jsonl"
    rows = map(json.loads, out.read_text().splitlines()) if out.exists() else []
    done = {(r["task"], r["shape"], r["length"], r["item"], r["setting"]) for r in rows}
    for task in args.tasks.split(","):
        items = TASKS[task](tokenizer, token_stream(tokenizer, read_texts(None)), args.length, args.items, 0)
        for shape in args.shapes.split(","):
            for i, item in enumerate(items):
                if (task, shape, args.length, i, name) in done:
                    continue
                seen.clear()
                context, question = shaped(tokenizer, item, shape)
                tokens, _ = answer(model, context, question, setting, shape, ANSWER_TOKENS, tokenizer.pad_token_id)
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                row = {"model": args.model, "task": task, "shape": shape, "length": args.length, "item": i,
                       "setting": name, "answer": text,
                       "correct": correct(text, item.answers)}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{task} {shape} done", flush=True)


if __name__ == "__main__":
    main()
