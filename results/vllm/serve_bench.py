"""`vllm serve`, stock and with slerpmerge, under the same load: rounds of C concurrent pass-key requests of L
tokens against the OpenAI-compatible completions endpoint on 127.0.0.1. Reports request throughput, time to
first token (p50, p99) and each request's answer, beside the transformers path's answer to the same item.

The two servers run one after the other (two on 2 cores would share them); each gets a warm-up round first.

    .venv-vllm/bin/python results/vllm/serve_bench.py --model smollm2-135m --length 2048 --concurrency 8 --rounds 3 \
        --out results/vllm/serve-smollm2-135m.json

Memory-bound (a KV budget where stock vLLM holds a few 2048-token requests, so it queues or preempts), with
preemptions counted:

    .venv-vllm/bin/python results/vllm/serve_bench.py --model smollm2-135m --length 2048 --concurrency 32 --rounds 2 \
        --kv-cache-memory-bytes 629145600 --preemptions --out results/vllm/serve-smollm2-135m-c32.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import os

import slerpmerge
from slerpmerge.evaluate import corpus, tasks
from slerpmerge.models import BUILTINS, load
from slerpmerge.vllm_plugin import engine_args, serve_flags

NEW_TOKENS = 16
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as results/vllm/bench.py: steady runs on 2 cores
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")


def start_server(flags: list[str], port: int, log: Path, stats: bool = False) -> subprocess.Popen:
    # the server's own module: vllm-cpu 0.32.0's `vllm serve` fails looking up a distribution named `vllm`
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", "m", *([] if stats else ["--disable-log-stats"])]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    proc.kill()
    raise RuntimeError("vllm serve did not come up in 600 s")


def complete(port: int, ids: list[int]) -> dict:
    """One streamed completion: its time to first token, total time and text."""
    body = json.dumps(dict(model="m", prompt=ids, max_tokens=NEW_TOKENS, temperature=0, stream=True)).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                     {"Content-Type": "application/json"})
    start, first, text = time.perf_counter(), None, ""
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            piece = json.loads(line[6:])["choices"][0]["text"]
            if first is None and piece:
                first = time.perf_counter() - start
            text += piece
    return dict(ttft_s=first, total_s=time.perf_counter() - start, text=text)


def rounds(port: int, prompts: list[list[int]], concurrency: int, count: int) -> list[dict]:
    out = []
    with ThreadPoolExecutor(concurrency) as pool:
        for r in range(count):
            batch = prompts[r * concurrency:(r + 1) * concurrency]
            start = time.perf_counter()
            results = list(pool.map(lambda ids: complete(port, ids), batch))
            wall = time.perf_counter() - start
            out.append(dict(wall_s=wall, requests_per_s=len(batch) / wall, results=results))
    return out


def preemptions(port: int) -> float:
    """The server's count of preempted requests so far (its Prometheus metrics; needs stats on)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("vllm:num_preemptions"))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", choices=list(BUILTINS))
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=8391)
    p.add_argument("--kv-cache-memory-bytes", type=int, default=2 << 30,
                   help="each server's KV budget; small enough and the load is memory-bound (stock queues or preempts)")
    p.add_argument("--preemptions", action="store_true", help="count preemptions from the servers' metrics "
                   "(turns vLLM's stats on, which the TTFT rows above were measured without)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    settings = BUILTINS[args.model].defaults
    model, tokenizer = load(args.model)
    filler = corpus.token_stream(tokenizer, corpus.default_texts())
    count = args.concurrency * (args.rounds + 1)
    items = tasks.passkey_items(tokenizer, filler, args.length, count, seed=0)
    prompts = [item.ids[0].tolist() for item in items]
    # the transformers path on the same items, each alone
    reference = []
    with slerpmerge.merging(model, **settings):
        for item in items[args.concurrency:]:
            new = model.generate(item.ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, item.ids.shape[1]:]
            reference.append(tokenizer.decode(new, skip_special_tokens=True))
    shortened = engine_args(args.model, settings, max_model_len=args.length + 64, dtype="float32",
                            kv_cache_memory_bytes=args.kv_cache_memory_bytes, seed=0)
    stock = {k: v for k, v in shortened.items() if k != "hf_overrides"}
    report = dict(model=args.model, length=args.length, concurrency=args.concurrency, rounds=args.rounds,
                  settings=settings, new_tokens=NEW_TOKENS, kv_cache_memory_bytes=args.kv_cache_memory_bytes,
                  engines={})
    for name, engine in (("stock", stock), ("slerpmerge", shortened)):
        server = start_server(serve_flags(engine), args.port, args.out.with_suffix(f".{name}.log"), args.preemptions)
        try:
            rounds(args.port, prompts[:args.concurrency], args.concurrency, 1)  # warm-up
            before = preemptions(args.port) if args.preemptions else None
            measured = rounds(args.port, prompts[args.concurrency:], args.concurrency, args.rounds)
            preempted = preemptions(args.port) - before if args.preemptions else None
        finally:
            server.terminate()
            server.wait(60)
        results = [r for m in measured for r in m["results"]]
        answers = [tasks.correct(r["text"], item.answers) for r, item in zip(results, items[args.concurrency:])]
        ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
        report["engines"][name] = dict(
            requests_per_s=statistics.median(m["requests_per_s"] for m in measured),
            requests_per_s_rounds=[m["requests_per_s"] for m in measured],
            ttft_p50_s=percentile(ttfts, 0.5), ttft_p99_s=percentile(ttfts, 0.99),
            passkey_correct=sum(answers), preemptions=preempted, answers=[r["text"] for r in results])
        print(name, json.dumps({k: v for k, v in report["engines"][name].items() if k != "answers"}), flush=True)
    report["transformers"] = dict(passkey_correct=sum(tasks.correct(t, item.answers)
                                                      for t, item in zip(reference, items[args.concurrency:])),
                                  answers=reference)
    report["throughput_speedup"] = (report["engines"]["slerpmerge"]["requests_per_s"]
                                    / report["engines"]["stock"]["requests_per_s"])
    report["same_answers_as_transformers"] = sum(
        tasks.correct(a, item.answers) == tasks.correct(b, item.answers)
        for a, b, item in zip(report["engines"]["slerpmerge"]["answers"], reference, items[args.concurrency:]))
    print(json.dumps({k: report[k] for k in ("throughput_speedup", "same_answers_as_transformers")}))
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
