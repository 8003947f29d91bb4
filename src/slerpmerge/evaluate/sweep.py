"""A resumable sweep: settings × prose windows and task items, one JSON line per result.

Every setting is compared with the base model on the same windows and items. A killed sweep resumes where it
stopped: rows already in results.jsonl are not computed again, and the same seed gives the same windows and items.
Speed is not taken from these runs (one per item, on a busy machine) but measured apart (`speed.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .corpus import begin, token_stream, windows
from .metrics import match_rate, next_token_metrics
from .runs import generate, key
from .shapes import answer, shaped
from .tasks import TASKS, correct

BASE = {"method": "base"}


def read_rows(path: Path) -> tuple[list[dict], bool]:
    """The rows of a JSON-lines file up to the first that does not parse, and whether every line parsed."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                return rows, False
    return rows, True


class Results:
    """A JSON-lines file, appended one row at a time; knows which rows exist. A line cut off by a kill is
    dropped and computed again. The file is rewritten only then, so another eval appending to the same folder
    (on other settings) loses nothing."""

    def __init__(self, path: Path, fields: tuple[str, ...]):
        self.path, self.fields = path, fields
        self.rows, whole = read_rows(path)
        self.done = {self._key(r) for r in self.rows}
        path.parent.mkdir(parents=True, exist_ok=True)
        if not whole:
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def _key(self, row: dict) -> tuple:
        return tuple(row[f] for f in self.fields)

    def has(self, **k) -> bool:
        return self._key(k) in self.done

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add(self._key(row))
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


RESULT_KEY = ("model", "kind", "length", "item", "setting")


def sweep(model_name: str, model, tokenizer, texts: list[str], out: Path, settings: list[dict], *,
          lengths=(), n_windows: int = 0, gen_tokens: int = 16, tasks=(), task_lengths=(), task_items: int = 0,
          task_tokens: int = 8, shapes=("end",), seed: int = 0, progress=None) -> Results:
    """Task rows' kind is the task, with its shape after a colon where the question does not simply end the prompt
    ("once:later")."""
    results = Results(out / "results.jsonl", RESULT_KEY)
    pad_id = tokenizer.pad_token_id
    stream = token_stream(tokenizer, texts)
    others = [s for s in settings if s["method"] != "base"]

    def step():
        if progress:
            progress.update(1)

    for length in lengths:
        for i, ids in enumerate(windows(stream, length, n_windows, seed, begin(tokenizer))):
            ids = ids[None]
            todo = [s for s in others if not results.has(model=model_name, kind="next_token", length=length, item=i,
                                                         setting=key(s))]
            for _ in range(len(others) - len(todo)):
                step()
            if not todo:
                continue
            base_logits, base_gen, _ = generate(model, ids, BASE, gen_tokens, pad_id)
            for s in todo:
                logits, gen, short = generate(model, ids, s, gen_tokens, pad_id)
                results.add({"model": model_name, "kind": "next_token", "length": length, "item": i,
                             "setting": key(s), "method": s["method"], "merged_length": short,
                             **next_token_metrics(base_logits, logits),
                             "gen_match": match_rate(base_gen, gen) if gen_tokens else None})
                step()

    for task, shape in [(t, s) for t in tasks for s in shapes]:
        kind = task if shape == "end" else f"{task}:{shape}"
        for length in task_lengths:
            for i, item in enumerate(TASKS[task](tokenizer, stream, length, task_items, seed)):
                context, question = shaped(tokenizer, item, shape)
                for s in [BASE, *others]:
                    if results.has(model=model_name, kind=kind, length=length, item=i, setting=key(s)):
                        step()
                        continue
                    gen, short = answer(model, context, question, s, shape, task_tokens, pad_id)
                    text = tokenizer.decode(gen, skip_special_tokens=True)
                    results.add({"model": model_name, "kind": kind, "length": length, "item": i,
                                 "setting": key(s), "method": s["method"], "merged_length": short,
                                 "depth": item.depth, "correct": float(correct(text, item.answers)),
                                 "answer": text.strip()[:80]})
                    step()
    return results


def ruler_sweep(model_name: str, model, tokenizer, folder, out: Path, settings: list[dict], *, tasks, lengths,
                count: int, seed: int = 0, chat: bool = False, shapes=("end",), command: str = "", progress=None,
                cache=None) -> Results:
    """RULER's tasks under every setting beside the base model, into the same results.jsonl, resumable as `sweep`.
    A row keeps the item's answer, RULER's score of it (a fraction), the expected strings and the command."""
    from . import ruler

    results = Results(out / "results.jsonl", RESULT_KEY)
    runs = [BASE, *(s for s in settings if s["method"] != "base")]
    for length in lengths:
        for task in tasks:
            kinds = [(task if shape == "end" else f"{task}:{shape}", shape) for shape in shapes]
            todo = [(i, s, kind, shape) for i in range(count) for kind, shape in kinds for s in runs
                    if not results.has(model=model_name, kind=kind, length=length, item=i, setting=key(s))]
            if progress:
                progress.update(count * len(kinds) * len(runs) - len(todo))
            if not todo:
                continue
            if progress:
                progress.set_postfix_str(f"{task} at {length}")
            items = ruler.items(tokenizer, folder, task, length, count, seed, chat, cache)
            for i, s, kind, shape in todo:
                item = items[i]
                context, question = shaped(tokenizer, item, shape)
                gen, short = answer(model, context, question, s, shape, ruler.new_tokens(task), tokenizer.pad_token_id)
                text = tokenizer.decode(gen, skip_special_tokens=True)
                results.add({"model": model_name, "suite": "ruler", "kind": kind, "length": length, "item": i,
                             "setting": key(s), "method": s["method"], "merged_length": short,
                             "tokens": item.ids.shape[1], "score": ruler.score(task, text, item.answers),
                             "answer": text.strip(), "references": list(item.answers), "command": command})
                if progress:
                    progress.update(1)
    return results


def speed_sweep(model_name: str, model, tokenizer, out: Path, settings: list[dict], lengths, runs: int,
                progress=None) -> Results:
    """The measured prefill speedup of every setting at every length (resumable per length)."""
    from .speed import measure

    results = Results(out / "speed.jsonl", ("model", "length", "setting"))
    for length in lengths:
        todo = [s for s in settings if not results.has(model=model_name, length=length, setting=key(s))]
        if not todo:
            continue
        for row in measure(model, tokenizer, length, todo, runs, progress):
            if not results.has(model=model_name, length=length, setting=row["setting"]):
                results.add({"model": model_name, **row})
    return results
