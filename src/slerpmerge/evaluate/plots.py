"""The sweep's pictures: agreement vs cutoff (as the original study drew it), the speed/quality Pareto view, and
task accuracy vs cutoff. Each reads summary rows and writes one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"slerp": "o", "mean": "s", "drop": "^", "truncate": "x"}


def _keep(r) -> str:
    return f"keep {r['keep_start']}+{r['keep_end']}" if r["keep_start"] or r["keep_end"] else "keep none"


def _variant(r) -> str:
    extra = f" {r['extra']}" if r.get("extra") else ""
    pos = " reindex" if r.get("positions") == "reindex" else ""
    return f"{r['method']}{pos}{extra}"


def _one_cutoff(r) -> bool:
    """Rows that sit on a cutoff axis: one merge point (several-stage rows appear in the Pareto view)."""
    return isinstance(r["layer_cutoff"], int)


def _cut_label(r) -> str:
    c = r["layer_cutoff"]
    return ",".join(map(str, c)) if isinstance(c, list) else str(c)


def agreement_vs_cutoff(summary: list[dict], path: Path, model: str) -> None:
    rows = [r for r in summary if r["kind"] == "next_token" and r["model"] == model]
    panels = sorted({(_variant(r), _keep(r)) for r in rows if _one_cutoff(r)})
    if not panels:
        return
    lengths = sorted({r["length"] for r in rows})
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False, sharey=True)
    colours = plt.cm.viridis([i / max(1, len(lengths) - 1) for i in range(len(lengths))])
    for ax, (variant, keep) in zip(axes.flat, panels):
        for length, colour in zip(lengths, colours):
            sel = sorted((r for r in rows if _variant(r) == variant and _keep(r) == keep and r["length"] == length
                          and _one_cutoff(r)), key=lambda r: r["layer_cutoff"])
            if sel:
                ax.plot([r["layer_cutoff"] for r in sel], [r["top1_agree"] for r in sel], "o-", color=colour,
                        label=f"{length} tokens")
                ax.fill_between([r["layer_cutoff"] for r in sel], [r["top1_agree_lo"] for r in sel],
                                [r["top1_agree_hi"] for r in sel], color=colour, alpha=0.12)
            trunc = [r for r in rows if r["method"] == "truncate" and _keep(r) == keep and r["length"] == length]
            if trunc:
                ax.axhline(trunc[0]["top1_agree"], color=colour, ls=":", lw=1)
        ax.set_title(f"{variant}, {keep}", fontsize=9)
        ax.set_xlabel("layer cutoff")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 agreement with base")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, title="dotted: truncate", title_fontsize=7)
    fig.suptitle(f"{model}: next-token top-1 agreement vs layer cutoff (95 % Wilson bands)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(summary: list[dict], path: Path, model: str) -> None:
    rows = [r for r in summary if r["kind"] == "next_token" and r["model"] == model and r.get("speedup")]
    if not rows:
        return
    length = max(r["length"] for r in rows)
    rows = [r for r in rows if r["length"] == length]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    stages = lambda r: "" if _one_cutoff(r) or r["layer_cutoff"] is None else " 2-stage"  # noqa: E731
    variants = sorted({(_variant(r) + stages(r), _keep(r)) for r in rows})
    colours = plt.cm.tab10.colors + plt.cm.Dark2.colors
    for (variant, keep), colour in zip(variants, colours * 2):
        sel = [r for r in rows if (_variant(r) + stages(r), _keep(r)) == (variant, keep)]
        ax.scatter([r["speedup"] for r in sel], [r["top1_agree"] for r in sel], color=colour,
                   marker=MARKERS.get(sel[0]["method"], "D"), label=f"{variant}, {keep}")
        for r in sel:
            if r["layer_cutoff"] is not None:
                ax.annotate(_cut_label(r), (r["speedup"], r["top1_agree"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel(f"measured prefill speedup at {length} tokens (x)")
    ax.set_ylabel("top-1 agreement with base")
    ax.set_title(f"{model}: speed against quality (numbers: layer cutoff; up and right is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def task_accuracy(summary: list[dict], path: Path, model: str) -> None:
    rows = [r for r in summary if r["kind"] != "next_token" and r["model"] == model]
    panels = sorted({(r["kind"], r["length"]) for r in rows})
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False, sharey=True)
    colours = plt.cm.tab10.colors
    for ax, (kind, length) in zip(axes.flat, panels):
        sel = [r for r in rows if (r["kind"], r["length"]) == (kind, length)]
        variants = sorted({(_variant(r), _keep(r)) for r in sel if _one_cutoff(r)})
        for (variant, keep), colour in zip(variants, colours * 3):
            line = sorted((r for r in sel if (_variant(r), _keep(r)) == (variant, keep) and _one_cutoff(r)),
                          key=lambda r: r["layer_cutoff"])
            ax.plot([r["layer_cutoff"] for r in line], [r["accuracy"] for r in line], "-", color=colour,
                    label=f"{variant}, {keep}", marker=MARKERS.get(line[0]["method"], "D"))
        for r in sel:
            if r["method"] == "base":
                ax.axhline(r["accuracy"], color="black", lw=1.2, label="base model")
            elif r["method"] == "truncate":
                ax.axhline(r["accuracy"], color="grey", ls=":", label=f"truncate, {_keep(r)}")
        ax.set_title(f"{kind}, {length} tokens (n={sel[0]['n']})", fontsize=9)
        ax.set_xlabel("layer cutoff")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{model}: long-context task accuracy vs layer cutoff", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(summary: list[dict], out: Path) -> list[Path]:
    made = []
    for model in sorted({r["model"] for r in summary}):
        for name, fn in (("agreement", agreement_vs_cutoff), ("pareto", pareto), ("tasks", task_accuracy)):
            path = out / f"{model}-{name}.png"
            fn(summary, path, model)
            if path.exists():
                made.append(path)
    return made
