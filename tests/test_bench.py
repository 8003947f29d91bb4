import json
import os
import subprocess
import sys

import pytest
from tiny import tiny_model

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from slerpmerge.bench import causal_pairs, cpu_peak_bytes, flops, ideal_speedup, layer_work
from slerpmerge.settings import cutoff_grid


def test_causal_pairs():
    assert causal_pairs(4) == 10  # 1 + 2 + 3 + 4
    assert causal_pairs(10, window=4) == 10 + 6 * 4
    assert causal_pairs(3, window=8) == 6


def test_ideal_speedup_by_hand():
    model = tiny_model("llama")  # 4 layers, hidden 64, 4 heads of 16, 2 kv heads, mlp 128
    p = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128  # q, o, k, v and the three MLP maps
    assert layer_work(model) == [(p, 64, None)] * 4
    work = lambda t: 2 * p * t + 4 * 64 * t * (t + 1) / 2  # noqa: E731
    assert ideal_speedup(model, 100, 51, 1) == pytest.approx(4 * work(100) / (2 * work(100) + 2 * work(51)))
    assert ideal_speedup(model, 100, [51, 27], [0, 2]) == pytest.approx(
        4 * work(100) / (work(100) + 2 * work(51) + work(27)))
    assert ideal_speedup(model, 100, 100, 0) == pytest.approx(1.0)


def test_sliding_layers_count_their_window():
    model = tiny_model("gemma3")  # sliding window 8 on layers 0 and 2
    shapes = layer_work(model)
    assert [w for _, _, w in shapes] == [8, None, 8, None]
    full, sliding = flops([shapes[1]], 100)[0], flops([shapes[0]], 100)[0]
    assert sliding < full


def test_default_cutoffs_span_the_depth():
    assert cutoff_grid(30, (0.15, 0.4, 0.65, 0.85)) == [3, 11, 19, 25]


def test_bench_command_json():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "slerpmerge", "bench", "--lengths", "64", "--cutoffs", "5,20",
                           "--runs", "2", "--decode-tokens", "3", "--threads", "1", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert [r["layer_cutoff"] for r in rows] == [5, 20]
    for r in rows:
        for key in ("length", "base_prefill_s", "merged_prefill_s", "speedup", "ideal_speedup", "efficiency",
                    "base_decode_tok_s", "merged_decode_tok_s", "runs"):
            assert key in r
        assert r["length"] == 64 and r["runs"] == 2 and r["threads"] == 1 and r["merged_length"] == 33
        # SmolLM2: 30 layers, 3 key-value heads of 64, float32; layers after the cutoff cache the 33 merged tokens
        per_token = 2 * 3 * 64 * 4
        assert r["base_kv_bytes"] == 30 * 64 * per_token
        assert r["merged_kv_bytes"] == ((r["layer_cutoff"] + 1) * 64 + (29 - r["layer_cutoff"]) * 33) * per_token
        assert r["base_peak_bytes"] > r["base_kv_bytes"] and r["merged_peak_bytes"] > r["merged_kv_bytes"]
        lo, hi = r["merged_decode_spread"]
        assert lo <= r["merged_decode_tok_s"] <= hi
    assert rows[0]["ideal_speedup"] > rows[1]["ideal_speedup"] > 1


def test_rss_peak_reads_a_known_allocation():
    """64 MiB filled in a fresh process: the peak reads 64 MiB, and nothing allocated reads about nothing."""
    code = ("import torch\n"
            "from slerpmerge.bench import return_freed_memory, rss_peak\n"
            "return_freed_memory()\n"
            "rss_peak(lambda: torch.ones(2**24).sum())\n"  # warm-up
            "print(rss_peak(lambda: torch.ones(2**24).sum()), rss_peak(lambda: None))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    filled, nothing = map(int, out.stdout.split())
    assert filled == pytest.approx(2**26, rel=0.05)
    assert nothing < 2**20


def test_cpu_peak_memory_falls_with_the_merge():
    """A prefill's peak on the CPU holds the KV cache and the activations: merging after layer 0 of 4 shrinks
    both, merging after the last layer shrinks neither."""
    config = LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    ids = torch.randint(0, 128, (1, 2048), generator=torch.Generator().manual_seed(0))
    base, early, late = cpu_peak_bytes(model, ids, [dict(layer_cutoff=0), dict(layer_cutoff=3)])
    kv = 4 * 2 * 2048 * 256 * 4  # layers, keys and values, tokens, width, float32
    assert kv < base < 4 * kv
    assert early < 0.75 * base
    assert late == pytest.approx(base, rel=0.1)
