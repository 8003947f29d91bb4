"""Time to first token, stock vLLM beside slerpmerge-in-vLLM, on a random-weight 1B Llama on a CUDA GPU.

Random weights answer nothing, but they cost what trained ones cost: this times the engine, not the answers.
Both engines live in one process on one GPU, each with its share of the memory; every timed run alternates
between them (and which goes first alternates), on the same random prompts, after a warm-up; medians and
(min-max) over --runs. The ideal is slerpmerge's work count for the prompt's short length.

    python tools/gpu_ttft.py --lengths 4096,16384 --runs 5 --out $OUT/gpu-ttft.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from slerpmerge.bench.ideal import ideal_speedup
from slerpmerge.merge import merged_length
from slerpmerge.settings import MergeSettings
from slerpmerge.vllm_plugin import engine_args

# Llama 3.2 1B's shapes: 16 layers, 2048 wide, 32 query and 8 key-value heads of 64, a 128k vocabulary
CONFIG = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, bos_token_id=1,
              eos_token_id=2, tie_word_embeddings=True)
# a quarter of the tokens kept after layer 7 of 16, keynorm-free (no calibration on random weights)
SETTINGS = dict(layer_cutoff=7, method="prune", target=0.25, keep_start=4, keep_end=32)


def timed(llm, ids: list[int]) -> float:
    from vllm import SamplingParams, TokensPrompt

    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, temperature=0),
                 use_tqdm=False)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="4096,16384")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from vllm import LLM

    lengths = [int(x) for x in args.lengths.split(",")]
    config = LlamaConfig(**CONFIG)
    folder = Path(tempfile.mkdtemp(prefix="llama-1b-random-"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    with torch.device("meta"):
        shapes = AutoModelForCausalLM.from_config(config)
    common = dict(max_model_len=max(lengths) + 8, dtype="bfloat16", gpu_memory_utilization=0.4, seed=0,
                  skip_tokenizer_init=True)
    shortened = engine_args(str(folder), SETTINGS, **common)
    stock = {k: v for k, v in shortened.items() if k != "hf_overrides"}
    llms = {"stock": LLM(**stock), "slerpmerge": LLM(**shortened)}
    names, rows = list(llms), []
    g = torch.Generator().manual_seed(0)
    device = torch.cuda.get_device_name()
    for length in lengths:
        ids = [torch.randint(3, CONFIG["vocab_size"], (length,), generator=g).tolist() for _ in range(args.runs + 1)]
        for name in names:
            timed(llms[name], ids[-1])
        times = {name: [] for name in names}
        for run in range(args.runs):
            for name in (names if run % 2 == 0 else names[::-1]):
                times[name].append(timed(llms[name], ids[run]))
        kept = merged_length(length, MergeSettings.make(**SETTINGS))
        ideal = ideal_speedup(shapes, length, kept, SETTINGS["layer_cutoff"])
        base = statistics.median(times["stock"])
        for name in names:
            t = times[name]
            rows.append(dict(length=length, engine=name, kept=kept if name == "slerpmerge" else length,
                             ttft_s=dict(median=statistics.median(t), min=min(t), max=max(t), runs=t),
                             speedup=base / statistics.median(t), ideal=ideal if name == "slerpmerge" else 1.0,
                             settings=SETTINGS, device=device))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("| prompt tokens | engine | TTFT s (min-max) | speedup | ideal |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        s = r["ttft_s"]
        print(f"| {r['length']} | {r['engine']} | {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}) | "
              f"{r['speedup']:.2f}x | {r['ideal']:.2f}x |")


if __name__ == "__main__":
    main()
