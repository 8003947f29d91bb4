"""The tables and the plot of docs/vllm.md from the rows bench.py wrote.

    .venv-vllm/bin/python results/vllm/report.py results/vllm/smollm2-135m.jsonl results/vllm/gemma3-270m.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(paths: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    print("| model | prompt tokens | kept after the cutoff | stock vLLM TTFT s (min–max) "
          "| slerpmerge TTFT s (min–max) | speedup | ideal | of ideal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    decode = []
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        ttft = {(r["length"], r["engine"]): r for r in rows if "ttft_s" in r}
        lengths = sorted({length for length, _ in ttft})
        speed, ideal = [], []
        for n in lengths:
            s, m = ttft[n, "stock"], ttft[n, "slerpmerge"]
            t = lambda r: f"{r['ttft_s']['median']:.2f} ({r['ttft_s']['min']:.2f}–{r['ttft_s']['max']:.2f})"  # noqa
            print(f"| {m['model']} | {n} | {m['kept']} | {t(s)} | {t(m)} | **{m['speedup']:.2f}x** | "
                  f"{m['ideal']:.2f}x | {m['speedup'] / m['ideal']:.2f} |")
            speed.append(m["speedup"])
            ideal.append(m["ideal"])
        model = rows[0]["model"]
        line = ax.plot(lengths, speed, "o-", label=f"{model} measured")[0]
        ax.plot(lengths, ideal, "--", color=line.get_color(), label=f"{model} ideal")
        decode += [r for r in rows if "decode_tokens_per_s" in r]
    print()
    print("| model | prompt tokens | engine | decode tokens/s (min–max) |")
    print("| --- | --- | --- | --- |")
    for r in decode:
        d = r["decode_tokens_per_s"]
        print(f"| {r['model']} | {r['length']} | {r['engine']} | {d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f}) |")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("TTFT speedup over stock vLLM")
    ax.set_title("slerpmerge inside vLLM (CPU), default settings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(paths[0]).parent / "ttft.png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
