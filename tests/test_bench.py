import json
import os
import subprocess
import sys

import pytest
from tiny import tiny_model

from slerpmerge.bench import causal_pairs, default_cutoffs, flops, ideal_speedup, layer_work


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
    assert default_cutoffs(30) == [3, 11, 19, 25]


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
        assert r["speedup"] == pytest.approx(r["base_prefill_s"] / r["merged_prefill_s"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        assert r["merged_kv_bytes"] < r["base_kv_bytes"]
    assert rows[0]["ideal_speedup"] > rows[1]["ideal_speedup"] > 1
