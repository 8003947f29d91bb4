"""RULER rows as the markdown tables of docs/results.md: each setting's average over the 13 tasks with its
bootstrap 95 % interval, and its score per task, over the first --items items of every task (so that every task
stands on as many items, as a run cut off part way through a larger count leaves them). Several files (`eval`'s
results.jsonl, presses.py's presses.jsonl) read as one. From the repository root:

    .venv/bin/python results/ruler/report.py results/ruler/smollm2-135m-4096/results.jsonl --items 5 \\
        --settings results/ruler/settings-smollm2-135m.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from slerpmerge.evaluate.runs import key, name
from slerpmerge.evaluate.summary import ruler_averages

TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
         "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
SHORT = ("s1", "s2", "s3", "mk1", "mk2", "mk3", "mv", "mq", "vt", "cwe", "fwe", "qa1", "qa2")  # the table's columns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="rows in eval's format")
    p.add_argument("--items", type=int, required=True, help="the first this many items of every task")
    p.add_argument("--shape", default="end", help="where the question sits (eval's --shapes): end, later, reselect")
    p.add_argument("--settings", help="JSON lines: the settings to show, in this order (default: all), then the presses")
    args = p.parse_args()
    rows = [json.loads(line) for path in args.results for line in Path(path).read_text().splitlines()]
    rows = [{**r, "kind": r["kind"].partition(":")[0]} for r in rows
            if r["item"] < args.items and r["kind"].partition(":")[2] == ("" if args.shape == "end" else args.shape)]
    order = ([key(json.loads(line)) for line in Path(args.settings).read_text().splitlines() if line.strip()]
             if args.settings else sorted({r["setting"] for r in rows if r["method"] != "kvpress"}))
    order += sorted({r["setting"] for r in rows if r["method"] == "kvpress"})  # presses.py's, after the settings
    per_task = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per_task[r["setting"]][r["kind"]].append(r["score"])
    averages = {a["settings_json"]: a for a in ruler_averages(rows, {})}
    print(f"{rows[0]['model']}, RULER at {rows[0]['length']} tokens, question {args.shape}, the first {args.items} "
          f"items of each task ({args.items * len(TASKS)} in all)\n")
    print("columns: " + ", ".join(f"{s} {t}" for s, t in zip(SHORT, TASKS)) + "\n")
    print("| setting | average (95 % interval) | kept tokens | " + " | ".join(SHORT) + " |")
    print("| --- " * (len(TASKS) + 3) + "|")
    for setting in order:
        tasks = per_task.get(setting)
        if not tasks or any(len(tasks.get(t, [])) != args.items for t in TASKS):
            counts = {t: len(tasks.get(t, [])) for t in TASKS} if tasks else {}
            print(f"| {name(json.loads(setting))} | incomplete: {counts} |")
            continue
        a = averages[setting]
        cells = " | ".join(f"{statistics.mean(tasks[t]):.2f}" for t in TASKS)
        print(f"| {name(json.loads(setting))} | {a['accuracy']:.2f} ({a['accuracy_lo']:.2f}–{a['accuracy_hi']:.2f}) "
              f"| {a['merged_length']:.0f} | {cells} |")


if __name__ == "__main__":
    main()
