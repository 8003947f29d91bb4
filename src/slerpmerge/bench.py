"""Speed and memory of base and merged models on the same inputs, beside the ideal from counting the work.

work(t) of one decoder layer at t tokens = 2·P·t (its linear maps, P weights) + 4·H·d·pairs(t) (q·k and a·v over
the causal query-key pairs, H query heads of size d; a sliding layer sees at most its window). With cutoff c the
layers 0..c run at S tokens and the others at S': ideal = Σ work(S) / (Σ_{≤c} work(S) + Σ_{>c} work(S')).
Embedding and the head at the last position cost the same on both sides and are left out.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from .compat import Api, cache_kwargs
from .hooks import MergeSettings, layer_types, merged_lengths, merging
from .merge import merge_sequence

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096)


# -- the ideal ---------------------------------------------------------------------------------------------------

def causal_pairs(t: int, window: int | None = None) -> float:
    """Query-key pairs a causal layer computes over t tokens (within a sliding window, if any)."""
    if window is None or t <= window:
        return t * (t + 1) / 2
    return window * (window + 1) / 2 + (t - window) * window


def layer_work(model) -> list[tuple[int, int, int | None]]:
    """(linear weights P, H·d, window) of every decoder layer, read from the model's real shapes."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = getattr(config, "sliding_window", None)
    out = []
    for layer, kind in zip(model.model.layers, layer_types(config)):
        p = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
        out.append((p, heads * head_dim, window if kind == "sliding_attention" else None))
    return out


def flops(shapes, t: int) -> list[float]:
    return [2 * p * t + 4 * hd * causal_pairs(t, w) for p, hd, w in shapes]


def ideal_speedup(model, length: int, merged_lengths, cutoffs) -> float:
    """Σ work at `length` over Σ work with each stage's layers (after each cutoff) at that stage's length."""
    merged_lengths = [merged_lengths] if isinstance(merged_lengths, int) else list(merged_lengths)
    cutoffs = [cutoffs] if isinstance(cutoffs, int) else list(cutoffs)
    shapes = layer_work(model)
    seen = [length] * len(shapes)
    for cutoff, n in zip(cutoffs, merged_lengths):
        seen[cutoff + 1:] = [n] * (len(shapes) - cutoff - 1)
    merged = sum(flops([shape], t)[0] for shape, t in zip(shapes, seen))
    return sum(flops(shapes, length)) / merged


# -- measuring ---------------------------------------------------------------------------------------------------

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


class PeakMemory:
    """Peak memory a block allocates above what was in use before it, from CUDA's allocator (None elsewhere: on
    the CPU see `cpu_peak_bytes`)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start


# -- CPU peak memory ---------------------------------------------------------------------------------------------
# glibc keeps freed memory for reuse, so a long-lived process's resident size says little about one forward. A
# fresh child process measures instead: it hands every block of 64 KiB or more back to the system on free (a fixed
# mmap threshold), runs each prefill once to warm up, resets its peak resident size (/proc/self/clear_refs) and
# reads how far the next prefill raises it (VmHWM) above where it started (VmRSS). Linux with glibc only.

_M_MMAP_THRESHOLD = -3


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def rss_peak(fn) -> int:
    """Bytes by which ``fn()`` raises this process's peak resident size above its size before the call."""
    _libc().malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _proc_status("VmRSS")
    fn()
    return _proc_status("VmHWM") - before


def return_freed_memory() -> None:
    """Make glibc unmap every freed block of 64 KiB or more at once, instead of keeping it in the heap for reuse
    (its default threshold rises with the blocks it has freed)."""
    _libc().mallopt(_M_MMAP_THRESHOLD, 64 * 1024)


def _child_peaks(model_file: str, ids: torch.Tensor, variants: list[dict], threads: int) -> list[int]:
    return_freed_memory()
    torch.set_num_threads(threads)
    model = torch.load(model_file, weights_only=False)
    peaks = []
    for v in [None, *variants]:
        with contextlib.nullcontext() if v is None else merging(model, **v):
            time_prefill(model, ids)  # warm-up
            peaks.append(rss_peak(lambda: time_prefill(model, ids)))
    return peaks


def cpu_peak_bytes(model, ids: torch.Tensor, variants: list[dict]) -> list[int | None]:
    """Peak bytes one prefill adds on the CPU, for the base model and each variant, measured in a fresh child
    process (None where /proc/self/clear_refs or glibc is missing)."""
    try:
        _libc().mallopt
        Path("/proc/self/clear_refs").stat()
    except (OSError, AttributeError):
        return [None] * (len(variants) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_file = str(Path(tmp) / "model.pt")
        torch.save(model, model_file)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_child_peaks, (model_file, ids, variants, torch.get_num_threads()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if isinstance(t, torch.Tensor))


@torch.inference_mode()
def time_prefill(model, ids: torch.Tensor) -> tuple[float, int, int | None]:
    """Seconds for one prefill (fresh cache, logits of the last position only), its KV bytes and peak memory."""
    device = ids.device
    cache = DynamicCache(config=model.config)
    with PeakMemory(device) as mem:
        _sync(device)
        start = time.perf_counter()
        model(ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
        _sync(device)
        elapsed = time.perf_counter() - start
    return elapsed, cache_bytes(cache), mem.peak


@torch.inference_mode()
def time_decode(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Greedy tokens per second after the prefill, which is not counted."""
    cache = DynamicCache(config=model.config)
    out = model(ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    _sync(ids.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = model(token, **cache_kwargs(model, cache), use_cache=True).logits[:, -1:].argmax(-1)
    _sync(ids.device)
    return new_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def merge_cost(model, ids: torch.Tensor, settings: MergeSettings, runs: int) -> tuple[float, float]:
    """Median seconds of the merge itself, as the patch calls it, and of the first cutoff's decoder layer, on the
    same hidden states."""
    layer = model.model.layers[settings.cutoffs[0]]
    seen = {}

    def grab(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, {**kwargs, Api.of(model.model).cache_arg: None, "use_cache": False}

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    model(ids, use_cache=False, logits_to_keep=1)
    handle.remove()
    hidden = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]

    def median_time(fn):
        fn()
        times = []
        for _ in range(runs):
            _sync(ids.device)
            start = time.perf_counter()
            fn()
            _sync(ids.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    s = settings
    return (median_time(lambda: merge_sequence(hidden, None, s.keep_start, s.keep_end, s.method, positions,
                                               s.similarity, s.ratio)),
            median_time(lambda: layer(*seen["args"], **seen["kwargs"])))


@dataclass
class Row:
    length: int
    layer_cutoff: int | list[int]
    merged_length: int
    base_prefill_s: float
    merged_prefill_s: float
    base_prefill_spread: list[float]  # min, max over the runs
    merged_prefill_spread: list[float]
    speedup: float
    ideal_speedup: float
    efficiency: float
    base_decode_tok_s: float | None
    merged_decode_tok_s: float | None
    decode_speedup: float | None
    base_decode_spread: list[float] | None  # min, max tokens/s over the decode runs
    merged_decode_spread: list[float] | None
    base_kv_bytes: int
    merged_kv_bytes: int
    base_peak_bytes: int | None
    merged_peak_bytes: int | None
    merge_s: float
    layer_s: float
    merge_share_of_layer: float
    runs: int
    settings: dict  # the patch keyword arguments


def bench_model(model, ids: torch.Tensor, variants: list[dict], runs: int = 5, decode_tokens: int = 64,
                progress=None) -> list[Row]:
    """Base and each merged variant (patch kwargs) on the same `ids` (1, S): base measured once, runs interleaved.
    Peak memory comes from CUDA's allocator, or on the CPU from a fresh child process (`cpu_peak_bytes`)."""
    length = ids.shape[1]
    keys = [None, *range(len(variants))]

    def patched(v):
        return contextlib.nullcontext() if v is None else merging(model, **variants[v])

    prefill = {v: [] for v in keys}
    kv, peak, decode, stage_lengths = {}, {}, {}, {}
    for v in keys:  # warm-up, memory, KV size and the lengths each stage sees
        with patched(v):
            time_prefill(model, ids)
            _, kv[v], peak[v] = time_prefill(model, ids)
            if v is not None:
                stage_lengths[v] = merged_lengths(model)
    for _ in range(runs):
        for v in keys:
            with patched(v):
                prefill[v].append(time_prefill(model, ids)[0])
            if progress:
                progress.update(1)
    rates = {v: [] for v in keys}
    if decode_tokens:
        for v in keys:
            with patched(v):
                time_decode(model, ids, 2)  # warm-up
        for _ in range(runs):  # interleaved too: drift hits base and merged alike
            for v in keys:
                with patched(v):
                    rates[v].append(time_decode(model, ids, decode_tokens))
    for v in keys:
        decode[v] = statistics.median(rates[v]) if rates[v] else None
        if progress:
            progress.update(1)
    if ids.device.type == "cpu":
        peak = dict(zip(keys, cpu_peak_bytes(model, ids, variants)))
    rows = []
    for v, settings in enumerate(variants):
        base, merged = statistics.median(prefill[None]), statistics.median(prefill[v])
        merge_settings = MergeSettings(**settings)
        ideal = ideal_speedup(model, length, stage_lengths[v], merge_settings.cutoffs)
        merge_s, layer_s = merge_cost(model, ids, merge_settings, runs)
        rows.append(Row(
            length=length, layer_cutoff=settings["layer_cutoff"], merged_length=stage_lengths[v][-1],
            base_prefill_s=base, merged_prefill_s=merged,
            base_prefill_spread=[min(prefill[None]), max(prefill[None])],
            merged_prefill_spread=[min(prefill[v]), max(prefill[v])],
            speedup=base / merged, ideal_speedup=ideal, efficiency=base / merged / ideal,
            base_decode_tok_s=decode[None], merged_decode_tok_s=decode[v],
            base_decode_spread=[min(rates[None]), max(rates[None])] if rates[None] else None,
            merged_decode_spread=[min(rates[v]), max(rates[v])] if rates[v] else None,
            decode_speedup=decode[v] / decode[None] if decode[None] else None,
            base_kv_bytes=kv[None], merged_kv_bytes=kv[v], base_peak_bytes=peak[None], merged_peak_bytes=peak[v],
            merge_s=merge_s, layer_s=layer_s, merge_share_of_layer=merge_s / layer_s, runs=runs,
            settings=settings,
        ))
    return rows


def bench_ids(tokenizer, length: int, vocab_size: int, device) -> torch.Tensor:
    """`length` tokens of real text (the embedded document, repeated), or seeded random ids with no tokenizer."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab_size, (1, length), generator=g).to(device)
    from .data import long_document

    text = long_document()
    ids = tokenizer(text, return_tensors="pt").input_ids
    while ids.shape[1] < length:
        ids = torch.cat([ids, ids], 1)
    return ids[:, :length].to(device)


def default_cutoffs(num_layers: int) -> list[int]:
    """Four cutoffs across the depth."""
    return sorted({max(0, round(num_layers * f) - 1) for f in (0.15, 0.4, 0.65, 0.85)})


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    label = lambda c: ",".join(map(str, c)) if isinstance(c, list) else str(c)  # noqa: E731
    cutoffs = sorted({label(r["layer_cutoff"]) for r in rows}, key=lambda c: [int(x) for x in c.split(",")])
    colours = plt.cm.viridis([i / max(1, len(cutoffs) - 1) for i in range(len(cutoffs))])
    for c, colour in zip(cutoffs, colours):
        sel = sorted((r for r in rows if label(r["layer_cutoff"]) == c), key=lambda r: r["length"])
        xs = [r["length"] for r in sel]
        ax.plot(xs, [r["speedup"] for r in sel], "o-", color=colour, label=f"cutoff {c}: measured")
        ax.plot(xs, [r["ideal_speedup"] for r in sel], "--", color=colour, alpha=0.7, label=f"cutoff {c}: ideal")
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


def run(args) -> list[dict]:
    from tqdm import tqdm

    from .models import load

    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, cache=args.cache_dir)
    device = torch.device(args.device)
    model.to(device)
    if args.config:
        variants = [json.loads(Path(args.config).read_text())]
    else:
        cutoffs = args.cutoffs or default_cutoffs(model.config.num_hidden_layers)
        variants = [dict(layer_cutoff=c, keep_start=args.keep_start, keep_end=args.keep_end, method=args.method)
                    for c in cutoffs]
    lengths = args.lengths or list(DEFAULT_LENGTHS)
    machine = describe_machine(device)
    rows = []
    steps = len(lengths) * (args.runs + 1) * (len(variants) + 1)  # prefill runs, then decode
    with tqdm(total=steps, desc="bench", disable=args.json or None, leave=False) as bar:
        for length in lengths:
            ids = bench_ids(tokenizer, length, model.config.vocab_size, device)
            for row in bench_model(model, ids, variants, args.runs, args.decode_tokens, bar):
                rows.append({"model": args.model, **asdict(row), "dtype": str(model.dtype), **machine})
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(rows, indent=1))
        plot(rows, out / "bench.png", f"{args.model}, {machine['threads']} threads, {machine['cpu']}")
    return rows


def print_table(rows: list[dict]) -> None:
    m = rows[0]
    print(f"{m['model']} ({m['dtype']}) on {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}; "
          f"median of {m['runs']} runs after a warm-up")
    print(f"{'length':>7}{'cutoff':>7}{'S_merged':>9}{'base s':>9}{'merged s':>9}{'speedup':>9}{'ideal':>7}"
          f"{'eff':>6}{'dec base':>9}{'dec mrg':>8}{'kv MB':>12}{'peak MB':>12}{'merge/layer':>12}")
    for r in rows:
        dec_b = f"{r['base_decode_tok_s']:.1f}" if r["base_decode_tok_s"] else "-"
        dec_m = f"{r['merged_decode_tok_s']:.1f}" if r["merged_decode_tok_s"] else "-"
        kv = f"{r['base_kv_bytes'] / 2**20:.0f}->{r['merged_kv_bytes'] / 2**20:.0f}"
        peak = (f"{r['base_peak_bytes'] / 2**20:.0f}->{r['merged_peak_bytes'] / 2**20:.0f}"
                if r["base_peak_bytes"] is not None else "-")
        cutoff = ",".join(map(str, r["layer_cutoff"])) if isinstance(r["layer_cutoff"], list) else r["layer_cutoff"]
        print(f"{r['length']:>7}{cutoff:>7}{r['merged_length']:>9}{r['base_prefill_s']:>9.3f}"
              f"{r['merged_prefill_s']:>9.3f}{r['speedup']:>8.2f}x{r['ideal_speedup']:>6.2f}x{r['efficiency']:>6.2f}"
              f"{dec_b:>9}{dec_m:>8}{kv:>12}{peak:>12}{r['merge_share_of_layer']:>11.1%}")


def add_parser(sub, model_arguments) -> None:
    p = sub.add_parser("bench", help="prefill and decode speed and memory, base vs merged, beside the ideal",
                       description="Time base and merged on the same inputs: prefill latency, decode tokens/s, "
                                   "KV-cache bytes and peak memory, with the ideal speedup from counting the work.")
    model_arguments(p)
    p.set_defaults(threads=os.cpu_count())
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], help="default 256,...,4096")
    p.add_argument("--cutoffs", type=lambda s: [int(x) for x in s.split(",")], help="default: four across the depth")
    p.add_argument("--keep-start", type=int, default=0)
    p.add_argument("--keep-end", type=int, default=0)
    p.add_argument("--method", default="slerp")
    p.add_argument("--config", help="JSON file of patch settings (from `slerpmerge tune`) instead of --cutoffs")
    p.add_argument("--runs", type=int, default=5, help="timed runs per setting, after a warm-up (default 5)")
    p.add_argument("--decode-tokens", type=int, default=64, help="new tokens for the decode rate (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="folder for bench.json and bench.png")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")

    def cmd(args):
        if args.runs < 1:
            raise ValueError("--runs must be at least 1")
        rows = run(args)
        if args.json:
            print(json.dumps(rows))
        else:
            print_table(rows)

    p.set_defaults(func=cmd)
