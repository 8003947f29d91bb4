"""The evaluation: corpus windows, metrics, tasks, a resumable sweep and the `eval` command."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tiny import tiny_model

from slerpmerge.evaluate import speed_sweep, summarise, sweep
from slerpmerge.evaluate.corpus import default_texts, read_texts, token_stream, windows
from slerpmerge.evaluate.metrics import bootstrap, match_rate, next_token_metrics, wilson
from slerpmerge.evaluate.runs import check, select, truncate
from slerpmerge.evaluate.sweep import Results, read_rows
from slerpmerge.evaluate.tasks import TASKS, correct


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


def test_windows_begin_as_the_tokenizer_begins_a_text():
    stream = torch.arange(10, 10_000)
    ws = windows(stream, 128, 20, seed=3, start=torch.tensor([1]))
    assert all(w.numel() == 128 and int(w[0]) == 1 for w in ws)  # <bos>, then 127 tokens of the stream
    assert all(torch.equal(w[1:], torch.arange(int(w[1]), int(w[1]) + 127)) for w in ws)
    assert len({int(w[1]) for w in ws}) == 20


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


@pytest.mark.parametrize("task", list(TASKS))
def test_tasks_place_the_fact_at_its_depth(smollm2, task):
    _, tokenizer = smollm2
    filler = token_stream(tokenizer, default_texts()[:40])
    for item in TASKS[task](tokenizer, filler, 1024, 5, seed=1):
        assert abs(item.ids.shape[1] - 1024) <= 2 or task == "qa"
        for place in item.fact:  # the recorded tokens spell the answer
            assert any(a.lower() in tokenizer.decode(item.ids[0, list(place)]).lower() for a in item.answers)
        where = min(min(place) for place in item.fact) / item.ids.shape[1]
        assert abs(where - item.depth) < 0.1 or task == "qa", (task, where, item.depth)  # qa: somewhere in the doc
    once = TASKS["once"](tokenizer, filler, 512, 1)[0]
    assert len(once.fact) == 1 and len(TASKS["passkey"](tokenizer, filler, 512, 1)[0].fact) == 2
    assert correct(" It was built in 1861.", ("1861",)) and not correct("1862", ("1861",))


@pytest.mark.parametrize("task", list(TASKS))
def test_items_begin_as_the_tokenizer_begins_a_text(smollm2, gemma3, task):
    """Gemma 3's tokenizer adds <bos> (its first layers' attention sink), SmolLM2's adds nothing; either way the
    item is as long and its recorded tokens still spell the answer."""
    for model_and_tokenizer, bos in ((smollm2, None), (gemma3, 2)):
        tokenizer = model_and_tokenizer[1]
        filler = token_stream(tokenizer, default_texts()[:40])
        for item in TASKS[task](tokenizer, filler, 1024, 3, seed=1):
            first = int(item.ids[0, 0])
            assert (first == bos) if bos is not None else first != tokenizer.bos_token_id
            assert int((item.ids == tokenizer.bos_token_id).sum()) == (bos is not None)
            assert abs(item.ids.shape[1] - 1024) <= 2 or task == "qa"
            for place in item.fact:
                assert any(a.lower() in tokenizer.decode(item.ids[0, list(place)]).lower() for a in item.answers)
            question = tokenizer.decode(item.ids[0, item.context.shape[1]:])
            assert question.startswith("\n") and "?" in question and "?" not in tokenizer.decode(item.context[0, -8:])


def test_truncate_and_select_keep_what_they_say():
    ids = torch.arange(100)[None]
    assert truncate(ids, 0.25, keep_start=4).tolist() == [[0, 1, 2, 3, *range(79, 100)]]
    model = tiny_model("llama")
    setting = dict(method="select", layer_cutoff=1, target=0.2, keep_start=2, keep_end=3, window=4)
    chosen = select(model, torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(0)), setting)
    assert chosen.shape == (1, 10)
    with pytest.raises(ValueError, match="truncate needs a target"):
        check({"method": "truncate"})
    with pytest.raises(ValueError, match="protect applies to method guided"):
        check({"method": "prune", "layer_cutoff": 3, "protect": 0.5})


@torch.no_grad()
def test_select_reruns_the_model_on_the_best_tokens():
    """Selection keeps the kept ends and the tokens the cutoff layer's last queries attend to most, in order."""
    model = tiny_model("qwen3", attn="eager")
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(2))
    attention = model(ids, output_attentions=True).attentions[1][0, :, -4:].mean((0, 1))  # (S,)
    middle = attention[2:37].argsort(descending=True)[:3] + 2
    want = sorted([0, 1, *middle.tolist(), 37, 38, 39])
    got = select(model, ids, dict(method="select", layer_cutoff=1, target=8 / 40, keep_start=2, keep_end=3,
                                  window=4))
    assert got[0].tolist() == ids[0, want].tolist()


def test_sweep_resumes_and_is_reproducible(smollm2, tmp_path):
    model, tokenizer = smollm2
    texts = default_texts()[:60]
    settings = [dict(method="slerp", layer_cutoff=20), dict(method="prune", layer_cutoff=20, target=0.5),
                dict(method="truncate", target=0.5)]
    kwargs = dict(lengths=[48], n_windows=3, gen_tokens=4, tasks=["once"], task_lengths=[200], task_items=2)
    first = sweep("smollm2-135m", model, tokenizer, texts, tmp_path / "a", settings, **kwargs).rows
    assert len(first) == 3 * 3 + 2 * (3 + 1)
    path = tmp_path / "a" / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # killed mid-write
    resumed = sweep("smollm2-135m", model, tokenizer, texts, tmp_path / "a", settings, **kwargs).rows
    assert resumed == first  # the same windows, items and numbers
    speed = speed_sweep("smollm2-135m", model, tokenizer, tmp_path / "a", settings, [48], runs=1).rows
    assert len(speed) == 4 and all(r["speedup"] > 0 for r in speed)
    summary = summarise(resumed, speed)
    trunc = next(r for r in summary if r["method"] == "truncate" and r["kind"] == "next_token")
    prune = next(r for r in summary if r["method"] == "prune" and r["kind"] == "next_token")
    assert trunc["merged_length"] == prune["merged_length"] == 24  # the same shortened length
    assert 0 <= prune["top1_agree_lo"] <= prune["top1_agree"] <= prune["top1_agree_hi"] <= 1
    assert trunc["speedup"] is not None and trunc["ideal_speedup"] > 1
    assert any(r["method"] == "base" and r["kind"] == "once" for r in summary)


def test_eval_command(tmp_path):
    settings = tmp_path / "settings.jsonl"
    settings.write_text('{"method": "guided", "layer_cutoff": 14, "target": 0.25, "keep_end": 8}\n'
                        '# a comment\n{"method": "truncate", "target": 0.25, "keep_start": 4}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "slerpmerge", "eval", "--out", str(tmp_path / "out"), "--settings",
                           str(settings), "--lengths", "64", "--windows", "2", "--tasks", "once,facts",
                           "--task-lengths", "160", "--task-items", "2", "--speed-runs", "1", "--threads", "2"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"next_token", "once", "facts"}
    assert {r["method"] for r in rows} == {"base", "guided", "truncate"}
    summary = (out / "summary.csv").read_text()
    assert summary.startswith("model,kind,length,method,setting,n") and "guided @14 keep 0+8 target=0.25" in summary
    assert (out / "smollm2-135m-quality-vs-speed.png").stat().st_size > 10_000
    assert "truncate" in proc.stdout


def test_results_of_two_evals_in_one_folder_are_all_kept(tmp_path, monkeypatch):
    """A second eval appending to the folder while the first opens it must lose nothing: opening a whole file
    writes nothing; only a line cut off by a kill makes it rewrite."""
    path = tmp_path / "results.jsonl"
    fields = ("item",)
    first = Results(path, fields)
    first.add({"item": 0})
    written = []
    monkeypatch.setattr(type(path), "write_text", lambda self, *a, **k: written.append(self))
    second = Results(path, fields)  # opens while the first is still appending
    first.add({"item": 1})
    second.add({"item": 2})
    assert written == [] and second.has(item=0) and not second.has(item=1)
    assert read_rows(path) == ([{"item": 0}, {"item": 1}, {"item": 2}], True)
    monkeypatch.undo()
    path.write_text(path.read_text() + '{"item": 3')  # killed mid-write
    assert read_rows(path) == ([{"item": 0}, {"item": 1}, {"item": 2}], False)
    Results(path, fields)
    assert path.read_text().splitlines()[-1] == '{"item": 2}'


def test_the_summary_counts_rows_another_eval_wrote_while_this_one_ran(tmp_path, monkeypatch):
    """Two evals into one folder: the summary of the one that ends last counts the other's rows, appended while it
    ran (not only the rows it read when it opened the file)."""
    from slerpmerge.cli import build_parser
    from slerpmerge.evaluate import command

    out = tmp_path / "out"
    other = {"model": "smollm2-135m", "kind": "once", "length": 160, "item": 0, "method": "truncate",
             "setting": json.dumps({"method": "truncate", "target": 0.33, "keep_start": 4}), "merged_length": 80,
             "depth": 0.1, "correct": 1.0, "answer": "12345"}

    def sweep_beside_another_eval(*args, **kwargs):
        results = sweep(*args, **kwargs)
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps(other) + "\n")
        return results

    monkeypatch.setattr(command, "sweep", sweep_beside_another_eval)
    args = build_parser().parse_args(["eval", "--out", str(out), "--lengths", "", "--windows", "0", "--tasks", "once",
                                      "--task-lengths", "160", "--task-items", "1", "--speed-runs", "0",
                                      "--threads", "2", "--methods", "truncate"])
    summary = command.run(args)
    ours = {r["settings_json"] for r in summary if r["method"] == "truncate"} - {other["setting"]}
    assert len(ours) == 5  # the grid's truncations, each on its one item
    assert [r["n"] for r in summary if r["settings_json"] == other["setting"]] == [1]


def test_flags_override_the_presets_and_unknown_tasks_or_shapes_are_refused():
    from argparse import Namespace

    from slerpmerge.evaluate.command import shape

    def args(**given):
        return Namespace(quick=True, suite="tasks", **given)

    assert shape(args())["task_items"] == 4 and shape(args(task_items=7))["task_items"] == 7
    with pytest.raises(ValueError, match="^--tasks takes passkey, once, word, facts, qa; got .vt."):
        shape(args(tasks=["vt"]))
    with pytest.raises(ValueError, match="^--shapes takes end, chat, later, reselect; got 'first'"):
        shape(args(shapes=["first"]))
    ruler = shape(Namespace(quick=False, suite="ruler", shapes=["reselect"]))
    assert ruler["shapes"] == ["reselect"] and ruler["task_items"] == 20
    with pytest.raises(ValueError, match="^--suite ruler --tasks takes niah_single_1"):
        shape(Namespace(quick=False, suite="ruler", tasks=["once"]))
