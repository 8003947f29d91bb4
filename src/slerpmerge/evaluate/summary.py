"""One row per (model, task, length, setting): rates with 95 % intervals, and the measured speed beside them."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from .metrics import bootstrap, wilson
from .runs import name

RATES = ("top1_agree", "top5_contains")
MEANS = ("kl", "gen_match")


def summarise(rows: list[dict], speed: list[dict], seed: int = 0) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["kind"], r["length"], r["setting"])].append(r)
    timed = {(s["model"], s["length"], s["setting"]): s for s in speed}
    out = []
    for (model, kind, length, setting), rs in sorted(groups.items()):
        s = json.loads(setting)
        row = {"model": model, "kind": kind, "length": length, "method": s["method"], "setting": name(s),
               "n": len(rs), "merged_length": statistics.mean(r["merged_length"] for r in rs)}
        if kind == "next_token":
            for m in RATES:
                k = sum(r[m] for r in rs)
                row[m], (row[m + "_lo"], row[m + "_hi"]) = k / len(rs), wilson(k, len(rs))
            for m in MEANS:
                vals = [r[m] for r in rs if r.get(m) is not None]
                row[m] = statistics.mean(vals) if vals else None
                row[m + "_lo"], row[m + "_hi"] = bootstrap(vals, seed) if vals else (None, None)
        else:
            row.update(rate([r["score"] if "score" in r else r["correct"] for r in rs], seed))
        t = timed.get((model, length, setting))
        row["speedup"] = t["speedup"] if t else None
        row["ideal_speedup"] = t["ideal_speedup"] if t else None
        row["settings_json"] = setting
        out.append(row)
    return out + ruler_averages(rows, timed, seed)


def ruler_averages(rows: list[dict], timed: dict, seed: int = 0) -> list[dict]:
    """RULER's headline: the mean of its task scores, one row per model, length, setting and shape, with how many
    tasks and items stand behind it. The interval is a bootstrap over all the items, given only where every task
    has as many items (the mean over items is then the mean over tasks)."""
    groups, merged = defaultdict(lambda: defaultdict(list)), defaultdict(list)
    for r in rows:
        if r.get("suite") == "ruler":
            task, _, shape = r["kind"].partition(":")
            k = (r["model"], "ruler" + (":" + shape if shape else ""), r["length"], r["setting"])
            groups[k][task].append(r["score"])
            merged[k].append(r["merged_length"])
    out = []
    for k, tasks in sorted(groups.items()):
        model, kind, length, setting = k
        s, scores = json.loads(setting), [x for v in tasks.values() for x in v]
        equal = len({len(v) for v in tasks.values()}) == 1
        lo, hi = bootstrap(scores, seed) if equal else (None, None)
        t = timed.get((model, length, setting))
        out.append({"model": model, "kind": kind, "length": length, "method": s["method"], "setting": name(s),
                    "n": len(scores), "tasks": len(tasks),
                    "merged_length": statistics.mean(merged[k]),
                    "accuracy": statistics.mean(statistics.mean(v) for v in tasks.values()),
                    "accuracy_lo": lo, "accuracy_hi": hi, "interval": "bootstrap" if equal else None,
                    "speedup": t["speedup"] if t else None, "ideal_speedup": t["ideal_speedup"] if t else None,
                    "settings_json": setting})
    return out


def rate(scores: list[float], seed: int = 0) -> dict:
    """The mean of per-item scores with a 95 % interval: Wilson's where every score is 0 or 1 (a rate), else a
    bootstrap over the items (RULER's scores of several expected strings are fractions)."""
    mean = statistics.mean(scores)
    if all(x in (0, 1) for x in scores):
        lo, hi = wilson(sum(scores), len(scores))
        return {"accuracy": mean, "accuracy_lo": lo, "accuracy_hi": hi, "interval": "wilson"}
    lo, hi = bootstrap(scores, seed)
    return {"accuracy": mean, "accuracy_lo": lo, "accuracy_hi": hi, "interval": "bootstrap"}


def write_csv(summary: list[dict], path: Path) -> None:
    fields = []
    for r in summary:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in summary:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})


def print_summary(summary: list[dict]) -> None:
    w = max([11, *(len(r["kind"]) + 2 for r in summary)])  # RULER's task names are longer than eval's own
    print(f"{'model':14}{'task':{w}}{'length':>7}  {'setting':44}{'S_merged':>9}{'quality':>9}{'95% interval':>15}"
          f"{'kl':>7}{'speedup':>9}")
    for r in summary:
        quality = r.get("accuracy", r.get("top1_agree"))
        lo = r.get("accuracy_lo", r.get("top1_agree_lo"))
        hi = r.get("accuracy_hi", r.get("top1_agree_hi"))
        interval = f"{lo:.2f}-{hi:.2f}" if lo is not None else "-"
        kl = f"{r['kl']:.3f}" if r.get("kl") is not None else "-"
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        print(f"{r['model']:14}{r['kind']:{w}}{r['length']:>7}  {r['setting'][:43]:44}{r['merged_length']:>9.0f}"
              f"{quality:>9.2f}{interval:>15}{kl:>7}{speed:>9}")
