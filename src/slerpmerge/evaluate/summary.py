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
            k = sum(r["correct"] for r in rs)
            row["accuracy"], (row["accuracy_lo"], row["accuracy_hi"]) = k / len(rs), wilson(k, len(rs))
        t = timed.get((model, length, setting))
        row["speedup"] = t["speedup"] if t else None
        row["ideal_speedup"] = t["ideal_speedup"] if t else None
        row["settings_json"] = setting
        out.append(row)
    return out


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
    print(f"{'model':14}{'task':11}{'length':>7}  {'setting':44}{'S_merged':>9}{'quality':>9}{'95% interval':>15}"
          f"{'kl':>7}{'speedup':>9}")
    for r in summary:
        quality = r.get("accuracy", r.get("top1_agree"))
        lo = r.get("accuracy_lo", r.get("top1_agree_lo"))
        hi = r.get("accuracy_hi", r.get("top1_agree_hi"))
        kl = f"{r['kl']:.3f}" if r.get("kl") is not None else "-"
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        print(f"{r['model']:14}{r['kind']:11}{r['length']:>7}  {r['setting'][:43]:44}{r['merged_length']:>9.0f}"
              f"{quality:>9.2f}{f'{lo:.2f}-{hi:.2f}':>15}{kl:>7}{speed:>9}")
