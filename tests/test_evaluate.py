"""The evaluation: corpus windows, metrics, tasks, a resumable sweep and the `eval` command."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from slerpmerge.evaluate import Setting, grid, summarise, sweep
from slerpmerge.evaluate.corpus import default_texts, read_texts, token_stream, windows
from slerpmerge.evaluate.metrics import bootstrap, match_rate, next_token_metrics, wilson
from slerpmerge.evaluate.tasks import correct, passkey_items, qa_items


def test_windows_are_exact_distinct_and_seeded():
    stream = torch.arange(10_000)
    ws = windows(stream, 128, 20, seed=3)
    assert all(w.numel() == 128 for w in ws)
    starts = [int(w[0]) for w in ws]
    assert len(set(starts)) == 20 and all(s % 128 == 0 for s in starts)  # non-overlapping slots
    assert [int(w[0]) for w in windows(stream, 128, 20, seed=3)] == starts
    assert [int(w[0]) for w in windows(stream, 128, 20, seed=4)] != starts
    with pytest.raises(ValueError, match="too few"):
        windows(stream, 1000, 11)


def test_read_texts(tmp_path):
    assert sum(len(t) for t in default_texts()) > 300_000
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert sorted(read_texts(tmp_path)) == ["hello", "one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_texts(tmp_path / "bad.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        read_texts(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")


def test_next_token_metrics():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    same = next_token_metrics(logits, logits)
    assert same == {"top1_agree": 1.0, "top3_contains": 1.0, "top5_contains": 1.0, "top5_overlap": 1.0,
                    "kl": pytest.approx(0.0, abs=1e-7)}
    swapped = next_token_metrics(logits, logits[[1, 0, 2, 3, 4, 5]])
    assert swapped["top1_agree"] == 0.0 and swapped["top3_contains"] == 1.0 and swapped["kl"] > 0
    far = next_token_metrics(logits, logits.flip(0))
    assert far["top5_contains"] == 0.0 and far["top5_overlap"] == 0.8  # base top-1 ranks last
    p, q = torch.softmax(logits, 0), torch.softmax(logits.flip(0), 0)
    assert far["kl"] == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


def test_intervals_and_match_rate():
    lo, hi = wilson(8, 10)
    assert 0.44 < lo < 0.5 and 0.94 < hi < 0.98  # the textbook 95 % Wilson interval for 8/10
    assert all(math.isnan(x) for x in wilson(0, 0))
    lo, hi = bootstrap([0.0, 1.0] * 50)
    assert lo < 0.5 < hi
    assert match_rate([1, 2, 3, 4], [1, 2, 5]) == 0.5 and match_rate([], []) == 1.0


def test_tasks_place_the_fact_at_its_depth(smollm2):
    _, tokenizer = smollm2
    filler = token_stream(tokenizer, default_texts()[:40])
    for item in passkey_items(tokenizer, filler, 1024, 3, seed=1):
        assert abs(item.ids.shape[1] - 1024) <= 2
        text = tokenizer.decode(item.ids[0])
        where = text.index(f"The pass key is {item.answers[0]}") / len(text)
        assert abs(where - item.depth) < 0.1
        assert text.endswith("The pass key is")
    qa = qa_items(tokenizer, filler, 2048, 2)
    assert all("Vellmouth" in tokenizer.decode(i.ids[0]) for i in qa)
    assert correct(" It was built in 1861.", ("1861",)) and not correct("1862", ("1861",))


def test_sweep_resumes_and_is_reproducible(smollm2, tmp_path):
    model, tokenizer = smollm2
    texts = default_texts()[:60]
    settings = grid([20], ["slerp", "drop", "truncate"], [(0, 0)])
    kwargs = dict(lengths=[48], settings=settings, n_windows=3, gen_tokens=4, tasks=["passkey"],
                  task_lengths=[200], task_items=2)
    first = sweep("smollm2-135m", model, tokenizer, texts, tmp_path / "a", **kwargs).rows
    assert len(first) == 3 * 3 + 2 * (3 + 1)
    path = tmp_path / "a" / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # killed mid-write
    resumed = sweep("smollm2-135m", model, tokenizer, texts, tmp_path / "a", **kwargs).rows
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(first)
    assert resumed[:5] == first[:5]  # kept as they were, not recomputed

    summary = summarise(resumed)
    trunc = next(r for r in summary if r["method"] == "truncate" and r["kind"] == "next_token")
    slerp = next(r for r in summary if r["method"] == "slerp" and r["kind"] == "next_token")
    assert trunc["merged_length"] == slerp["merged_length"] == 25  # the same shortened length
    assert 0 <= slerp["top1_agree_lo"] <= slerp["top1_agree"] <= slerp["top1_agree_hi"] <= 1
    assert any(r["method"] == "base" and r["kind"] == "passkey" for r in summary)


def test_setting_round_trip():
    s = Setting("slerp", 4, 1, 2, "reindex", (("similarity", 0.9),))
    assert Setting.from_dict(json.loads(s.key)) == s
    assert s.patch_kwargs()["similarity"] == 0.9


def test_eval_quick_command(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "slerpmerge", "eval", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    for key in ("model", "length", "layer_cutoff", "method", "top1_agree", "kl"):
        assert key in rows[0]
    assert {r["method"] for r in rows} >= {"slerp", "mean", "drop", "truncate"}
    assert {r["kind"] for r in rows} == {"next_token", "passkey", "qa"}
    assert (tmp_path / "summary.csv").read_text().startswith("model,kind,length,method")
    for name in ("agreement", "pareto", "tasks"):
        assert (tmp_path / f"smollm2-135m-{name}.png").stat().st_size > 10_000
    assert "truncate" in proc.stdout


def test_plots_take_every_kind_of_setting(tmp_path):
    from slerpmerge.evaluate import plot_all

    def row(method, cutoff, kind="next_token", **kw):
        return {"model": "m", "kind": kind, "length": 256, "method": method, "layer_cutoff": cutoff,
                "keep_start": 4, "keep_end": 32, "positions": "original", "extra": kw.pop("extra", ""), "n": 6,
                "top1_agree": 0.9, "top1_agree_lo": 0.6, "top1_agree_hi": 1.0, "speedup": 1.3, "accuracy": 0.5,
                **kw}

    summary = [row("slerp", 3), row("slerp", 9), row("slerp", [3, 9]), row("truncate", None),
               row("slerp", 9, extra='{"ratio": 0.5}'), row("slerp", 3, kind="passkey"),
               row("slerp", [3, 9], kind="passkey"), row("base", None, kind="passkey")]
    made = plot_all(summary, tmp_path)
    assert sorted(p.name for p in made) == ["m-agreement.png", "m-pareto.png", "m-tasks.png"]
