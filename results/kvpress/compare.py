"""slerpmerge beside kvpress presses: the same model, prompts and machine, every method interleaved in one run.

Run from the peers environment (`make peers`), from the repository root:

    .venv-peers/bin/python results/kvpress/compare.py --model smollm2-135m --lengths 1024,2048,4096 --out results/kvpress

Protocol (kvpress's own): the model reads a context, then a question, then answers. A press compresses each
layer's cache after the context's prefill; slerpmerge merges the context after its cutoff; the question and the
answer then run against whatever cache is left. (Read whole, a prompt's first answer token would come from an
uncompressed prefill and say nothing about a press.) Measured per method and length:

    time to first token   context prefill + question, fresh cache, median of --runs interleaved runs
    decode tokens/s       64 greedy tokens after that, median of --runs interleaved runs
    KV bytes              the cache after context and question
    CPU peak memory       of the context's prefill, in a fresh child process (slerpmerge.bench.memory)
    prose                 top-1 agreement and KL with the base model's next token after a 16-token question that
                          ends each prose window (slerpmerge eval's windows)
    pass key              the key stated once (slerpmerge eval's `once` items), asked after the context

kvpress runs each press at the compression ratio that leaves the same KV bytes as the slerpmerge setting it is
compared with, and at 0.5. Rows are appended to <out>/<model>.jsonl; a rerun at a length measures only the methods
that have no row there yet (a setting added by --config, say), with the base model timed again beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch
import kvpress
from transformers import DynamicCache, Gemma3ForCausalLM

from slerpmerge.bench.memory import return_freed_memory, rss_peak
from slerpmerge.bench.report import describe_machine
from slerpmerge.bench.runner import bench_ids
from slerpmerge.bench.timing import cache_bytes
from slerpmerge.compat import cache_kwargs
from slerpmerge.evaluate.corpus import read_texts, token_stream, windows
from slerpmerge.evaluate.metrics import next_token_metrics, wilson
from slerpmerge.evaluate.tasks import TASKS, correct
from slerpmerge.architecture import layer_types
from slerpmerge.patching import merging
from slerpmerge.models import BUILTINS, load
from slerpmerge.settings import label

PRESSES = {"snapkv": kvpress.SnapKVPress, "streaming": kvpress.StreamingLLMPress,
           "expected": kvpress.ExpectedAttentionPress, "knorm": kvpress.KnormPress}
QUESTION = 16  # prose: the last tokens of a window are the question


def make_press(name: str, ratio: float):
    if name == "snapkv":
        return kvpress.SnapKVPress(compression_ratio=ratio, window_size=32)
    return PRESSES[name](compression_ratio=ratio)


@contextlib.contextmanager
def pressed(model, name: str | None, ratio: float):
    """A press on the model for the block. On Gemma 3's text model kvpress hooks every layer, sliding ones too,
    and fails; it presses only the full-attention layers of Gemma 3 models it knows, so do the same here."""
    if name is None:
        yield
        return
    press = make_press(name, ratio)
    if not isinstance(model, Gemma3ForCausalLM):
        with press(model):
            yield
        return
    press.post_init_from_model(model)
    handles = [layer.self_attn.register_forward_hook(press.forward_hook, with_kwargs=True)
               for layer, kind in zip(model.model.layers, layer_types(model.config)) if kind == "full_attention"]
    for layer in model.model.layers:
        layer.self_attn.rotary_emb = model.model.rotary_emb
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def applied(model, method: dict):
    """The context a method runs in: a slerpmerge patch, a press, or both."""
    stack = contextlib.ExitStack()
    if method.get("patch"):
        stack.enter_context(merging(model, **method["patch"]))
    stack.enter_context(pressed(model, method.get("press"), method.get("ratio", 0.0)))
    return stack


@torch.inference_mode()
def kv_fraction(model, patch: dict, ids: torch.Tensor) -> float:
    """The KV bytes a slerpmerge setting's prefill of ``ids`` leaves, as a fraction of the base model's: the ratio a
    press is set to for the same KV bytes."""
    from slerpmerge.context import prefill

    base = DynamicCache(config=model.config)
    model(ids, **cache_kwargs(model, base), use_cache=True, logits_to_keep=1)
    with merging(model, **patch):
        short = prefill(model, ids).cache
    return cache_bytes(short) / cache_bytes(base)


@torch.inference_mode()
def read(model, context: torch.Tensor, question: torch.Tensor):
    """Context then question into a fresh cache, under whatever the caller applied; the last logits (V,) and the
    cache."""
    cache = DynamicCache(config=model.config)
    model(context, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    # True positions, as kvpress's pipeline gives them: a pressed cache is shorter than the tokens it has seen.
    start = context.shape[1]
    positions = torch.arange(start, start + question.shape[1])[None]
    out = model(question, position_ids=positions, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], cache, start + question.shape[1]


@torch.inference_mode()
def decode(model, logits: torch.Tensor, cache, seen: int, steps: int) -> list[int]:
    """Greedy tokens after `read`, the first from its logits; `seen` tokens came before."""
    tokens = [int(logits.argmax())]
    for i in range(steps - 1):
        out = model(torch.tensor([[tokens[-1]]]), position_ids=torch.tensor([[seen + i]]),
                    **cache_kwargs(model, cache), use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def timed(model, context, question, method, decode_tokens: int) -> tuple[float, float, int]:
    with applied(model, method):
        start = time.perf_counter()
        logits, cache, seen = read(model, context, question)
        ttft = time.perf_counter() - start
        kv = cache_bytes(cache)
        start = time.perf_counter()
        decode(model, logits, cache, seen, decode_tokens + 1)
        return ttft, decode_tokens / (time.perf_counter() - start), kv


def _child_peaks(model_file: str, context: torch.Tensor, methods: list[dict], threads: int) -> list[int]:
    return_freed_memory()
    torch.set_num_threads(threads)
    model = torch.load(model_file, weights_only=False)
    peaks = []
    for method in methods:
        def prefill():
            with torch.inference_mode(), applied(model, method):
                model(context, **cache_kwargs(model, DynamicCache(config=model.config)), use_cache=True,
                      logits_to_keep=1)
        prefill()
        peaks.append(rss_peak(prefill))
    return peaks


def peaks(model, context, methods) -> list[int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.pt")
        torch.save(model, path)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_child_peaks, (path, context, methods, torch.get_num_threads()))


def methods_for(model, settings: list[tuple[str, dict]], length: int, ids) -> list[dict]:
    """Base, each slerpmerge setting, each press at the ratio matching each setting's KV bytes and at 0.5, and the
    first setting with a press on top."""
    context, question = ids[:, :-QUESTION], ids[:, -QUESTION:]
    out = [{"name": "base"}]
    base_kv = cache_bytes(read(model, context, question)[1])
    ratios = {0.5}
    for name, patch in settings:
        with merging(model, **patch):
            cache = read(model, context, question)[1]
        ratio = round(1 - cache_bytes(cache) / base_kv, 3)
        ratios.add(ratio)
        out.append({"name": f"slerpmerge {name}", "patch": patch, "setting": label(patch)})
    for press in PRESSES:
        out += [{"name": f"kvpress {press} {r:.2f}", "press": press, "ratio": r} for r in sorted(ratios)]
    first = settings[0][1]
    out.append({"name": f"slerpmerge {settings[0][0]} + knorm 0.50", "patch": first, "setting": label(first),
                "press": "knorm", "ratio": 0.5})
    return out


def run(args) -> None:
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    settings = [("default", dict(BUILTINS[args.model].defaults))]
    for f in args.config or []:
        settings.append((Path(f).stem, json.loads(Path(f).read_text())))
    stream = token_stream(tokenizer, read_texts(None))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.model}.jsonl"
    done = {(r["length"], r["name"]) for r in map(json.loads, path.read_text().splitlines())} \
        if path.exists() else set()
    machine = describe_machine(torch.device("cpu"))
    for length in args.lengths:
        ids = bench_ids(tokenizer, length, model.config.vocab_size, "cpu")
        # A rerun measures the methods without a row, with the base model again beside them for their speedup.
        methods = [m for m in methods_for(model, settings, length, ids)
                   if m["name"] == "base" or (length, m["name"]) not in done]
        if len(methods) == 1:
            continue
        context, question = ids[:, :-QUESTION], ids[:, -QUESTION:]
        results = {m["name"]: {"ttft": [], "tok_s": [], "error": None} for m in methods}
        for m in methods:  # warm-up (and a method that fails says so once)
            try:
                timed(model, context, question, m, 2)
            except Exception as e:  # noqa: BLE001  (kvpress on an architecture it does not handle)
                results[m["name"]]["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        live = [m for m in methods if results[m["name"]]["error"] is None]
        for _ in range(args.runs):
            for m in live:
                ttft, tok_s, kv = timed(model, context, question, m, args.decode_tokens)
                results[m["name"]]["ttft"].append(ttft)
                results[m["name"]]["tok_s"].append(tok_s)
                results[m["name"]]["kv_bytes"] = kv
        for m, peak in zip(live, peaks(model, context, live)):
            results[m["name"]]["peak_bytes"] = peak
        quality = measure_quality(model, tokenizer, stream, length, live, args)
        base_ttft = statistics.median(results["base"]["ttft"])
        with path.open("a") as f:
            for m in methods:
                if (length, m["name"]) in done:
                    continue
                r = results[m["name"]]
                row = {"model": args.model, "length": length, "name": m["name"], "setting": m.get("setting"),
                       "press": m.get("press"), "ratio": m.get("ratio"), "error": r["error"], "runs": args.runs,
                       **machine}
                if r["error"] is None:
                    row.update(ttft_s=statistics.median(r["ttft"]), ttft_spread=[min(r["ttft"]), max(r["ttft"])],
                               speedup=base_ttft / statistics.median(r["ttft"]), base_ttft_s=base_ttft,
                               decode_tok_s=statistics.median(r["tok_s"]),
                               decode_spread=[min(r["tok_s"]), max(r["tok_s"])], kv_bytes=r["kv_bytes"],
                               peak_bytes=r.get("peak_bytes"), **quality[m["name"]])
                f.write(json.dumps(row) + "\n")
        print(f"{args.model} {length}: done", flush=True)


@torch.inference_mode()
def measure_quality(model, tokenizer, stream, length: int, methods: list[dict], args) -> dict:
    prose = windows(stream, length, args.windows, 0)
    items = TASKS["once"](tokenizer, stream, length, args.items, 0)
    out = {m["name"]: {"top1": [], "kl": [], "passkey": []} for m in methods}
    for ids in prose:
        ids = ids[None]
        base = read(model, ids[:, :-QUESTION], ids[:, -QUESTION:])[0]
        for m in methods:
            with applied(model, m):
                logits = read(model, ids[:, :-QUESTION], ids[:, -QUESTION:])[0]
            metrics = next_token_metrics(base, logits)
            out[m["name"]]["top1"].append(metrics["top1_agree"])
            out[m["name"]]["kl"].append(metrics["kl"])
    ask = len(tokenizer("\nWhat is the pass key? The pass key is", add_special_tokens=False).input_ids)
    for item in items:
        for m in methods:
            with applied(model, m):
                logits, cache, seen = read(model, item.ids[:, :-ask], item.ids[:, -ask:])
                text = tokenizer.decode(decode(model, logits, cache, seen, 8), skip_special_tokens=True)
            out[m["name"]]["passkey"].append(float(correct(text, item.answers)))
    rows = {}
    for name, q in out.items():
        k, n = sum(q["passkey"]), len(q["passkey"])
        top, nt = sum(q["top1"]), len(q["top1"])
        rows[name] = {"top1": top / nt, "top1_ci": wilson(top, nt), "kl": statistics.mean(q["kl"]),
                      "passkey": k / n, "passkey_ci": wilson(k, n), "windows": nt, "items": n}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048, 4096])
    p.add_argument("--config", action="append", help="a slerpmerge setting (JSON) to compare too; may repeat")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--windows", type=int, default=12, help="prose windows per length")
    p.add_argument("--items", type=int, default=12, help="pass key items per length")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/kvpress")
    run(p.parse_args())


if __name__ == "__main__":
    main()
