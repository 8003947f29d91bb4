"""Tables (markdown, on stdout) and plots (PNG) from the rows results/kvpress/compare.py wrote.

    .venv/bin/python results/kvpress/report.py results/kvpress
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"base": "black", "slerpmerge": "tab:blue", "kvpress": "tab:red", "combined": "tab:purple"}


def family(row: dict) -> str:
    if row["name"] == "base":
        return "base"
    if row["name"].startswith("slerpmerge") and row.get("press"):
        return "combined"
    return row["name"].split()[0]


def table(rows: list[dict]) -> str:
    out = []
    for length in sorted({r["length"] for r in rows}):
        out.append(f"\n**{length} tokens** ({rows[0]['windows']} prose windows, {rows[0]['items']} pass key items; "
                   f"medians of {rows[0]['runs']} runs)\n")
        out.append("| method | TTFT s | speedup | decode tok/s | KV MB | peak MB | prose top-1 | KL | pass key |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        here = [r for r in rows if r["length"] == length]
        base = next(r["ttft_s"] for r in here if r["name"] == "base")
        reruns = set()
        for r in here:
            if r.get("error"):
                out.append(f"| {r['name']} | fails: {r['error'][:70]} | | | | | | | |")
                continue
            name = r["name"]
            if abs(r.get("base_ttft_s", base) - base) > 1e-9:  # measured in a later run, beside its own base
                reruns.add(round(r["base_ttft_s"], 3))
                name += " *"
            lo, hi = r["passkey_ci"]
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "-"
            out.append(f"| {name} | {r['ttft_s']:.3f} | {r['speedup']:.2f}x | {r['decode_tok_s']:.1f} | "
                       f"{r['kv_bytes'] / 2**20:.1f} | {peak} | {r['top1']:.2f} | {r['kl']:.3f} | "
                       f"{r['passkey']:.2f} ({lo:.2f}-{hi:.2f}) |")
        if reruns:
            out.append(f"\n\\* measured in a later run; speedup against the base model timed in that run "
                       f"({', '.join(f'{b:.3f} s' for b in sorted(reruns))}).")
    return "\n".join(out)


def plot(rows: list[dict], path: Path, model: str) -> None:
    lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(2, len(lengths), figsize=(4.6 * len(lengths), 7.4), squeeze=False)
    for col, length in enumerate(lengths):
        sel = [r for r in rows if r["length"] == length and not r.get("error")]
        for row_i, (x, xlabel) in enumerate((("speedup", "time-to-first-token speedup (x)"),
                                             ("kv_mb", "KV cache after context and question (MB)"))):
            ax = axes[row_i, col]
            for r in sel:
                xv = r["kv_bytes"] / 2**20 if x == "kv_mb" else r[x]
                ax.scatter(xv, r["passkey"], color=COLOURS[family(r)], marker="o", s=28)
                ax.scatter(xv, r["top1"], color=COLOURS[family(r)], marker="x", s=28)
                ax.annotate(r["name"].replace("kvpress ", "").replace("slerpmerge ", "sm "), (xv, r["passkey"]),
                            fontsize=5, alpha=0.8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("o: pass key accuracy, x: prose top-1", fontsize=8)
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.set_title(f"{model}, {length} tokens", fontsize=9)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=k) for k, c in COLOURS.items()]
    axes[0, 0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(folder: str) -> None:
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        model = rows[0]["model"]
        print(f"\n### {model}\n{table(rows)}")
        plot(rows, Path(folder) / f"{model}.png", model)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/kvpress")
