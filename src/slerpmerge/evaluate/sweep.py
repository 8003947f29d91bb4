"""A resumable sweep: settings × lengths × windows (and tasks), one JSON line per result, then a summary.

Every setting is compared with the base model on the same windows. A killed sweep resumes where it stopped:
rows already in results.jsonl are not computed again, and the same seed gives the same windows and numbers.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..generate import FirstTokenClock
from ..hooks import merged_lengths, patch, unpatch
from ..merge import plan_merge
from .corpus import token_stream, windows
from .metrics import bootstrap, match_rate, next_token_metrics, wilson
from .tasks import TASKS, correct

BASELINES = ("truncate",)


@dataclass(frozen=True)
class Setting:
    """One way of shortening the sequence: a patch (method slerp / mean / drop ...) or a baseline (truncate)."""

    method: str
    layer_cutoff: int | None = None
    keep_start: int = 0
    keep_end: int = 0
    positions: str = "original"
    extra: tuple = field(default=())  # further patch keyword arguments, as sorted (name, value) pairs

    @classmethod
    def from_dict(cls, d: dict) -> "Setting":
        d = dict(d)
        d["extra"] = tuple(sorted((d.get("extra") or {}).items()))
        if isinstance(d.get("layer_cutoff"), list):
            d["layer_cutoff"] = tuple(d["layer_cutoff"])
        return cls(**d)

    @classmethod
    def from_patch_kwargs(cls, kwargs: dict) -> "Setting":
        """A setting from patch keyword arguments (a `tune` file, say)."""
        kw = dict(kwargs)
        named = {k: kw.pop(k) for k in ("method", "layer_cutoff", "keep_start", "keep_end", "positions") if k in kw}
        named.setdefault("method", "slerp")
        cutoff = named.get("layer_cutoff")
        if isinstance(cutoff, list):
            named["layer_cutoff"] = tuple(cutoff)
        return cls(**named, extra=tuple(sorted(kw.items())))

    @property
    def key(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    def patch_kwargs(self) -> dict:
        cutoff = list(self.layer_cutoff) if isinstance(self.layer_cutoff, tuple) else self.layer_cutoff
        return dict(layer_cutoff=cutoff, keep_start=self.keep_start, keep_end=self.keep_end,
                    positions=self.positions, method=self.method, **dict(self.extra))

    @property
    def label(self) -> str:
        keep = f" keep {self.keep_start}+{self.keep_end}" if self.keep_start or self.keep_end else ""
        extra = "".join(f" {k}={v}" for k, v in self.extra)
        cut = self.layer_cutoff
        cut = "" if cut is None else f" @{','.join(map(str, cut))}" if isinstance(cut, tuple) else f" @{cut}"
        return f"{self.method}{cut}{keep}{extra}"


BASE = Setting("base")


def grid(cutoffs, methods, keeps, positions=("original",)) -> list[Setting]:
    """Every method at every cutoff and keep; baselines once per keep (they have no cutoff)."""
    out = []
    for ks, ke in keeps:
        for m in methods:
            if m in BASELINES:
                out.append(Setting(m, None, ks, ke))
            else:
                out += [Setting(m, c, ks, ke, p) for c in cutoffs for p in positions]
    return out


def _shortened_length(ids: torch.Tensor, s: Setting) -> int:
    return plan_merge(torch.ones_like(ids, dtype=torch.bool), s.keep_start, s.keep_end).length


@torch.inference_mode()
def _run(model, ids: torch.Tensor, s: Setting, new_tokens: int, pad_id) -> tuple[torch.Tensor, float, list, int]:
    """One greedy generation: the prefill's last logits, its time to first token, the new tokens, and the
    sequence length the later layers saw."""
    if s.method == "truncate":  # the cheapest way to the same length: keep only the last tokens
        ids = ids[:, -_shortened_length(ids, s):]
    patched = s.method not in ("base", "truncate")
    if patched:
        patch(model, **s.patch_kwargs())
    try:
        clock = FirstTokenClock()
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(1, new_tokens),
                             do_sample=False, pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True,
                             streamer=clock)
        secs = clock.first_token_at - start
        length = merged_lengths(model)[-1] if patched else ids.shape[1]
    finally:
        if patched:
            unpatch(model)
    return out.logits[0][0], secs, out.sequences[0, ids.shape[1]:].tolist()[:new_tokens], length


class Results:
    """results.jsonl, appended one row at a time; knows which rows exist."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    break  # a line cut off by a kill: recomputed
        self.done = {self._key(r) for r in self.rows}
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    @staticmethod
    def _key(row: dict) -> tuple:
        return (row["model"], row["kind"], row["length"], row["item"], row["setting"])

    def has(self, **k) -> bool:
        return (k["model"], k["kind"], k["length"], k["item"], k["setting"]) in self.done

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add(self._key(row))
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def sweep(model_name: str, model, tokenizer, texts: list[str], out: Path, lengths, settings: list[Setting],
          n_windows: int, gen_tokens: int = 32, tasks=(), task_lengths=(), task_items: int = 6, task_tokens: int = 10,
          seed: int = 0, progress=None) -> Results:
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.jsonl")
    pad_id = tokenizer.pad_token_id
    stream = token_stream(tokenizer, texts)
    common = dict(model=model_name)

    for length in lengths:
        for i, ids in enumerate(windows(stream, length, n_windows, seed)):
            ids = ids[None]
            todo = [s for s in settings if not results.has(**common, kind="next_token", length=length, item=i,
                                                           setting=s.key)]
            if progress:
                progress.update(len(settings) - len(todo))
            if not todo:
                continue
            if i == 0:
                _run(model, ids, BASE, 1, pad_id)  # warm-up for the timings
            base_logits, base_s, base_gen, _ = _run(model, ids, BASE, gen_tokens, pad_id)
            for s in todo:
                logits, secs, gen, short = _run(model, ids, s, gen_tokens, pad_id)
                results.add({**common, "kind": "next_token", "length": length, "item": i, "setting": s.key,
                             **s.as_dict(), "merged_length": short, **next_token_metrics(base_logits, logits),
                             "gen_match": match_rate(base_gen, gen) if gen_tokens else None,
                             "base_prefill_s": base_s, "merged_prefill_s": secs})
                if progress:
                    progress.update(1)

    filler = token_stream(tokenizer, texts)
    for task in tasks:
        for length in task_lengths:
            for i, item in enumerate(TASKS[task](tokenizer, filler, length, task_items, seed)):
                for s in [BASE, *settings]:
                    if results.has(**common, kind=task, length=length, item=i, setting=s.key):
                        if progress:
                            progress.update(1)
                        continue
                    _, secs, gen, short = _run(model, item.ids, s, task_tokens, pad_id)
                    text = tokenizer.decode(gen, skip_special_tokens=True)
                    results.add({**common, "kind": task, "length": length, "item": i, "setting": s.key,
                                 **s.as_dict(), "merged_length": short, "depth": item.depth,
                                 "correct": float(correct(text, item.answers)), "answer": text.strip()[:80],
                                 "merged_prefill_s": secs})
                    if progress:
                        progress.update(1)
    return results


def summarise(rows: list[dict], seed: int = 0) -> list[dict]:
    """One row per (model, kind, length, setting): means with 95 % intervals, and the measured prefill speedup."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["kind"], r["length"], r["setting"])].append(r)
    base_time = {}
    for (model, kind, length, setting), rs in groups.items():
        if json.loads(setting)["method"] == "base":
            base_time[(model, kind, length)] = statistics.median(r["merged_prefill_s"] for r in rs)
    out = []
    for (model, kind, length, setting), rs in sorted(groups.items(), key=lambda kv: kv[0][:3] + (kv[0][3],)):
        s = json.loads(setting)
        row = {"model": model, "kind": kind, "length": length, "method": s["method"],
               "layer_cutoff": s["layer_cutoff"], "keep_start": s["keep_start"], "keep_end": s["keep_end"],
               "positions": s["positions"], "extra": json.dumps(s["extra"]) if s["extra"] else "", "n": len(rs),
               "merged_length": statistics.mean(r["merged_length"] for r in rs)}
        merged_s = statistics.median(r["merged_prefill_s"] for r in rs)
        if kind == "next_token":
            for m in ("top1_agree", "top3_contains", "top5_contains"):
                k = sum(r[m] for r in rs)
                row[m] = k / len(rs)
                row[m + "_lo"], row[m + "_hi"] = wilson(k, len(rs))
            for m in ("top5_overlap", "kl", "gen_match"):
                vals = [r[m] for r in rs if r.get(m) is not None]
                row[m] = statistics.mean(vals) if vals else None
                row[m + "_lo"], row[m + "_hi"] = bootstrap(vals, seed) if vals else (None, None)
            row["speedup"] = statistics.median(r["base_prefill_s"] for r in rs) / merged_s
        else:
            k = sum(r["correct"] for r in rs)
            row["accuracy"] = k / len(rs)
            row["accuracy_lo"], row["accuracy_hi"] = wilson(k, len(rs))
            base = base_time.get((model, kind, length))
            row["speedup"] = base / merged_s if base else None
        out.append(row)
    return out


def write_summary(summary: list[dict], path: Path) -> None:
    fields = []
    for r in summary:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in summary:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
