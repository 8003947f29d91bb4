"""Stock vLLM beside slerpmerge-in-vLLM, in one process: time to first token at several prompt lengths, decode
speed, and (with --passkey) the pass-key answers of both engines and of the transformers path.

Both engines are alive at once and every timed run alternates between them (which goes first alternates too), on
the same prompts: windows of Python's own reference prose. The ideal speedup is slerpmerge's work count
(`slerpmerge.bench.ideal`) for the prompt's short length. One JSON line per (length, engine) goes to --out.

    .venv-vllm/bin/python results/vllm/bench.py --model smollm2-135m --lengths 1024,2048,4096 --runs 5 \
        --out results/vllm/smollm2-135m.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# On 2 cores the engine's own Python threads need a core of their own: with two OpenMP threads the same prefill
# took 2-6x longer at random (bimodal runs); one thread bound to core 0 gives steady runs. Override to taste.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

import torch  # noqa: E402

from slerpmerge.bench.ideal import ideal_speedup  # noqa: E402
from slerpmerge.evaluate import corpus  # noqa: E402
from slerpmerge.merge import merged_length  # noqa: E402
from slerpmerge.models import BUILTINS, load  # noqa: E402
from slerpmerge.settings import MergeSettings  # noqa: E402
from slerpmerge.vllm_plugin import engine_args  # noqa: E402


def engines(model: str, settings: dict, max_len: int):
    from vllm import LLM

    common = dict(max_model_len=max_len, dtype="float32", kv_cache_memory_bytes=2 << 30, seed=0)
    shortened = engine_args(model, settings, **common)
    stock = dict(shortened)
    del stock["hf_overrides"]
    return {"stock": LLM(**stock), "slerpmerge": LLM(**shortened)}


def timed(llm, ids: list[int], new: int) -> float:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values), runs=values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", choices=list(BUILTINS))
    p.add_argument("--config", type=Path, help="settings as JSON (default: the model's built-in defaults)")
    p.add_argument("--lengths", default="1024,2048,4096")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64, help="decode speed: this many new tokens at the "
                   "middle length, minus the first token's time")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    settings = json.loads(args.config.read_text()) if args.config else BUILTINS[args.model].defaults
    hf_model, tokenizer = load(args.model)
    stream = corpus.token_stream(tokenizer, corpus.default_texts())
    short = MergeSettings.make(**settings)
    llms = engines(args.model, settings, max(lengths) + args.decode_tokens + 8)
    names = list(llms)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for length in lengths:
        ids = corpus.windows(stream, length, args.runs + 1, seed=length)
        ids = [w.tolist() for w in ids]
        for name in names:  # warm-up on a window of its own
            timed(llms[name], ids[-1], 1)
        times = {name: [] for name in names}
        for run in range(args.runs):
            for name in (names if run % 2 == 0 else names[::-1]):
                times[name].append(timed(llms[name], ids[run], 1))
        kept = merged_length(length, short)
        ideal = ideal_speedup(hf_model, length, kept, short.cutoffs)
        base = statistics.median(times["stock"])
        for name in names:
            rows.append(dict(model=args.model, length=length, engine=name, ttft_s=spread(times[name]),
                             speedup=base / statistics.median(times[name]),
                             ideal=ideal if name == "slerpmerge" else 1.0, kept=kept if name == "slerpmerge" else
                             length, settings=settings, machine=machine))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("settings", "machine")}), flush=True)
    middle = lengths[len(lengths) // 2]
    ids = [w.tolist() for w in corpus.windows(stream, middle, args.runs, seed=middle + 1)]
    decode = {name: [] for name in names}
    for run in range(args.runs):
        for name in (names if run % 2 == 0 else names[::-1]):
            first = timed(llms[name], ids[run], 1)
            total = timed(llms[name], ids[run], args.decode_tokens + 1)
            decode[name].append(args.decode_tokens / max(total - first, 1e-9))
    for name in names:
        rows.append(dict(model=args.model, length=middle, engine=name, decode_tokens_per_s=spread(decode[name]),
                         settings=settings, machine=machine))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("settings", "machine")}), flush=True)
    with args.out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
