"""Tables for docs/results.md from asklater.py's rows: per model, task and shape, each method's right answers of the
items, with Wilson 95 % intervals, and how many items it got right where the base model did not or missed where it
was right; then, per model and length, a grid of right answers: a row per task and shape, a column per method.

    .venv/bin/python results/shapes/report.py results/shapes/smollm2-135m.jsonl results/shapes/gemma3-270m.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from slerpmerge.evaluate.metrics import wilson


def main(paths: list[str]) -> None:
    for path in paths:
        rows = [json.loads(line) for line in open(path)]
        groups = defaultdict(dict)
        for r in rows:
            groups[(r["model"], r.get("task", "once"), r["shape"], r["length"])].setdefault(r["method"], {})[
                r["item"]] = r["correct"]
        for (model, task, shape, length), by_method in groups.items():
            base = by_method.get("base", {})
            print(f"\n**{model}, {task} items, question {shape}, {length} tokens**\n")
            print("| method | right | 95 % interval | base right, this wrong | base wrong, this right |")
            print("| --- | --- | --- | --- | --- |")
            for method, answers in by_method.items():
                n, k = len(answers), sum(answers.values())
                lo, hi = wilson(k, n)
                lost = sum(base.get(i, False) and not ok for i, ok in answers.items())
                won = sum(ok and not base.get(i, True) for i, ok in answers.items())
                print(f"| {method} | {k}/{n} | {lo:.2f}-{hi:.2f} | {lost} | {won} |")
        grid(groups)


def grid(groups: dict) -> None:
    for model, length in dict.fromkeys((m, n) for m, _, _, n in groups):
        cells = {(t, s): by for (m, t, s, n), by in groups.items() if (m, n) == (model, length)}
        methods = list(dict.fromkeys(name for by in cells.values() for name in by))
        print(f"\n**{model}, {length} tokens: right answers**\n")
        print("| task, shape | " + " | ".join(methods) + " |")
        print("| --- |" + " --- |" * len(methods))
        for (task, shape), by in sorted(cells.items()):
            counts = [f"{sum(by[m].values())}/{len(by[m])}" if m in by else "" for m in methods]
            print(f"| {task}, {shape} | " + " | ".join(counts) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
