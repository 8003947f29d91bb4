"""Quality against measured speed: one panel per task and length, every method beside the baselines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"truncate": ("grey", "x"), "select": ("tab:purple", "v"), "prune": ("tab:red", "^"),
         "guided": ("tab:blue", "o"), "guided-mean": ("tab:cyan", "s"), "slerp": ("tab:green", "D"),
         "mean": ("tab:olive", "d"), "drop": ("tab:brown", "<")}


def quality(r: dict) -> tuple[float, float, float]:
    if r["kind"] == "next_token":
        return r["top1_agree"], r["top1_agree_lo"], r["top1_agree_hi"]
    y = r["accuracy"]
    return y, r["accuracy_lo"] if r["accuracy_lo"] is not None else y, r["accuracy_hi"] if r["accuracy_hi"] is not None else y


def quality_vs_speed(summary: list[dict], path: Path, model: str) -> bool:
    rows = [r for r in summary if r["model"] == model]
    panels = sorted({(r["kind"], r["length"]) for r in rows})
    if not panels:
        return False
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax, (kind, length) in zip(axes.flat, panels):
        sel = [r for r in rows if (r["kind"], r["length"]) == (kind, length)]
        base = [r for r in sel if r["method"] == "base"]
        if base:
            ax.axhline(quality(base[0])[0], color="black", lw=1.0, label="base model")
        for method, (colour, marker) in STYLE.items():
            pts = sorted((r for r in sel if r["method"] == method and r.get("speedup")), key=lambda r: r["speedup"])
            if not pts:
                continue
            ys = [quality(r) for r in pts]
            ax.errorbar([r["speedup"] for r in pts], [y for y, _, _ in ys],
                        yerr=[[y - lo for y, lo, _ in ys], [hi - y for y, _, hi in ys]], fmt=marker,
                        color=colour, ms=5, capsize=2, lw=0.8, label=method,
                        ls="-" if method == "truncate" else "none")
        n = sel[0]["n"]
        what = {"next_token": "next-token top-1 agreement"}.get(kind, "accuracy (RULER: score)")
        ax.set_title(f"{kind}, {length} tokens, n={n}", fontsize=9)
        ax.set_xlabel("measured prefill speedup (x)")
        ax.set_ylabel(what, fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{model}: quality against speed (95 % Wilson intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(summary: list[dict], out: Path) -> list[Path]:
    made = []
    for model in sorted({r["model"] for r in summary}):
        path = out / f"{Path(model).name}-quality-vs-speed.png"  # a model folder's name, not its path
        if quality_vs_speed(summary, path, model):
            made.append(path)
    return made
