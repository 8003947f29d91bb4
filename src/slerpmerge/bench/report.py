"""What a benchmark ran on, and its rows as a table and a plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ..settings import cutoff_label


def describe_machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(rows: list[dict]) -> None:
    m = rows[0]
    print(f"{m['model']} ({m['dtype']}) on {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}; "
          f"median of {m['runs']} runs after a warm-up")
    print(f"{'length':>7}{'cutoff':>8}{'method':>9}{'S_merged':>9}{'base s':>9}{'merged s':>9}{'speedup':>9}"
          f"{'ideal':>7}{'eff':>6}{'dec base':>9}{'dec mrg':>8}{'kv MB':>12}{'peak MB':>12}{'merge/layer':>12}"
          f"{'score/layer':>12}")
    for r in rows:
        dec_b = f"{r['base_decode_tok_s']:.1f}" if r["base_decode_tok_s"] else "-"
        dec_m = f"{r['merged_decode_tok_s']:.1f}" if r["merged_decode_tok_s"] else "-"
        kv = f"{r['base_kv_bytes'] / 2**20:.0f}->{r['merged_kv_bytes'] / 2**20:.0f}"
        peak = (f"{r['base_peak_bytes'] / 2**20:.0f}->{r['merged_peak_bytes'] / 2**20:.0f}"
                if r["base_peak_bytes"] is not None else "-")
        method = r["settings"].get("method", "slerp")
        print(f"{r['length']:>7}{cutoff_label(r['layer_cutoff']):>8}{method:>9}{r['merged_length']:>9}"
              f"{r['base_prefill_s']:>9.3f}{r['merged_prefill_s']:>9.3f}{r['speedup']:>8.2f}x"
              f"{r['ideal_speedup']:>6.2f}x{r['efficiency']:>6.2f}{dec_b:>9}{dec_m:>8}{kv:>12}{peak:>12}"
              f"{r['merge_share_of_layer']:>11.1%}{r['score_share_of_layer']:>11.1%}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..settings import label

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({label({**r["settings"], "layer_cutoff": r["layer_cutoff"]}) for r in rows})
    colours = plt.cm.viridis([i / max(1, len(names) - 1) for i in range(len(names))])
    for name, colour in zip(names, colours):
        sel = sorted((r for r in rows if label({**r["settings"], "layer_cutoff": r["layer_cutoff"]}) == name),
                     key=lambda r: r["length"])
        xs = [r["length"] for r in sel]
        ax.plot(xs, [r["speedup"] for r in sel], "o-", color=colour, label=f"{name}: measured")
        ax.plot(xs, [r["ideal_speedup"] for r in sel], "--", color=colour, alpha=0.7, label=f"{name}: ideal")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("prefill speedup over the base model (x)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
