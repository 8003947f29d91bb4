import json
import os
import subprocess
import sys

import pytest
import torch
from tiny import tiny_model

import slerpmerge
from slerpmerge import tune
from slerpmerge.methods import METHODS
from slerpmerge.tune import candidates, search, stage_lengths


def test_every_candidate_patches():
    model = tiny_model("llama")
    heads = {c: [0, 2] for c in range(4)}
    for settings in candidates(4, heads=heads) + candidates(30, quick=True, heads={14: [1, 2]}):
        if max(slerpmerge.MergeSettings.make(**settings).cutoffs) < 4:
            with slerpmerge.merging(model, **settings):
                pass
    assert any(s.get("heads") == [1, 2] and s["layer_cutoff"] == 14 for s in candidates(30, True, {14: [1, 2]}))
    mix = {"score": "keynorm", "layer": 1, "heads": [0]}
    mixed = [s for s in candidates(4, heads=heads, mixes={c: mix for c in range(4)}) if "mix" in s]
    assert mixed and all(METHODS[s["method"]].scored and s["heads"] == heads[s["layer_cutoff"]] for s in mixed)
    for settings in mixed:
        with slerpmerge.merging(model, **settings):
            model(torch.randint(3, 128, (1, 40)))


@pytest.mark.parametrize("setting", [dict(layer_cutoff=1), dict(layer_cutoff=[0, 2], keep_end=3),
                                     dict(layer_cutoff=1, ratio=0.5), dict(layer_cutoff=1, method="guided",
                                                                           target=0.3, keep_start=2)])
@torch.no_grad()
def test_stage_lengths_are_what_the_patched_model_sees(setting):
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 45), generator=torch.Generator().manual_seed(0))
    with slerpmerge.merging(model, **setting):
        model(ids)
        assert stage_lengths(setting, 45) == slerpmerge.patching.merged_lengths(model)


def test_search_takes_the_fastest_that_meets_both_targets(monkeypatch):
    """Candidates tried fastest first; retrieval first; the first to meet both wins."""
    table = {1: (3.0, [True, False], 0.99), 2: (2.5, [True, True], 0.80), 3: (2.0, [True, True], 0.95),
             4: (1.5, [True, True], 0.99)}  # cutoff: ideal, answers, agreement
    monkeypatch.setattr(tune, "ideal", lambda model, s, length: table[s["layer_cutoff"]][0])
    monkeypatch.setattr(tune, "answers", lambda model, tok, items, s, base=None, shape="end":
                        [True, True] if s is None else table[s["layer_cutoff"]][1])
    monkeypatch.setattr(tune, "agreement", lambda model, prose, base, s: table[s["layer_cutoff"]][2])
    model = lambda ids, logits_to_keep: type("Out", (), {"logits": torch.zeros(1, 1, 4)})  # noqa: E731
    settings = [dict(layer_cutoff=c) for c in (4, 2, 1, 3)]
    chosen, tried = search(model, None, [torch.zeros(3, dtype=torch.long)], [], settings, 0.9, 1.0, 64)
    assert chosen["settings"] == {"layer_cutoff": 3}
    assert [r["settings"]["layer_cutoff"] for r in tried] == [1, 2, 3]
    assert tried[0]["retrieval"] == 0.5 and "agreement" not in tried[0]  # lost an answer: agreement not run
    chosen, _ = search(model, None, [torch.zeros(3, dtype=torch.long)], [], settings, 0.98, 1.0, 64)
    assert chosen["settings"] == {"layer_cutoff": 4}
    assert search(model, None, [torch.zeros(3, dtype=torch.long)], [], settings, 1.0, 1.0, 64)[0] is None


def test_search_confirms_a_pass_on_held_out_items(monkeypatch):
    """A candidate that meets both targets by chance on the tuning items but loses a base answer on the held-out
    ones is passed over; the held-out base answers are computed once."""
    table = {1: (3.0, [True, False]), 2: (2.0, [True, True])}  # cutoff: ideal, held-out answers
    calls = []

    def answers(model, tok, items, s, base=None, shape="end"):
        calls.append((items, s))
        if items == ["held"]:
            return [True, True] if s is None else table[s["layer_cutoff"]][1]
        return [True, True]

    monkeypatch.setattr(tune, "ideal", lambda model, s, length: table[s["layer_cutoff"]][0])
    monkeypatch.setattr(tune, "answers", answers)
    monkeypatch.setattr(tune, "agreement", lambda model, prose, base, s: 1.0)
    model = lambda ids, logits_to_keep: type("Out", (), {"logits": torch.zeros(1, 1, 4)})  # noqa: E731
    settings = [dict(layer_cutoff=c) for c in (2, 1)]
    chosen, tried = search(model, None, [torch.zeros(3, dtype=torch.long)], ["tune"], settings, 0.9, 1.0, 64,
                           holdout=["held"])
    assert chosen["settings"] == {"layer_cutoff": 2} and chosen["holdout"] == 1.0
    assert tried[0]["holdout"] == 0.5 and tried[0]["retrieval"] == 1.0
    assert sum(1 for items, s in calls if items == ["held"] and s is None) == 1
    chosen, _ = search(model, None, [torch.zeros(3, dtype=torch.long)], ["tune"], settings, 0.9, 1.0, 64)
    assert chosen["settings"] == {"layer_cutoff": 1}  # without held-out items the lucky one wins


def test_the_printout_keeps_every_candidate_the_held_out_check_judged():
    tried = [{"label": str(i), **({"holdout": 0.5} if i in (1, 4) else {})} for i in range(12)]
    assert [r["label"] for r in tune.shown(tried)] == ["1", "4", "7", "8", "9", "10", "11"]
    assert [r["label"] for r in tune.shown(tried[:3])] == ["0", "1", "2"]


@torch.no_grad()
def test_answers_in_each_shape_are_the_base_models_own(smollm2):
    """Unpatched, the question after a prefilled context is answered as in the whole prompt."""
    from slerpmerge.evaluate.corpus import default_texts, token_stream
    from slerpmerge.evaluate.tasks import TASKS

    model, tokenizer = smollm2
    items = TASKS["once"](tokenizer, token_stream(tokenizer, default_texts()[:40]), 200, 3)
    assert tune.answers(model, tokenizer, items, None, shape="later") == tune.answers(model, tokenizer, items, None)
    half = dict(layer_cutoff=20, method="prune", target=0.5, keep_end=4)
    assert len(tune.answers(model, tokenizer, items, half, shape="later")) == 3


def test_tune_command_writes_settings_that_patch_and_generate_read(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "best.json"
    run = lambda *a: subprocess.run([sys.executable, "-m", "slerpmerge", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, timeout=900)
    proc = run("tune", "--quick", "--length", "64", "--windows", "3", "--retrieval-length", "160", "--items", "2",
               "--target-agreement", "0.5", "--target-retrieval", "0", "--out", str(out), "--threads", "2",
               "--shape", "later")
    assert proc.returncode == 0, proc.stderr[-2000:]
    settings = json.loads(out.read_text())
    assert "chosen:" in proc.stdout and "with their questions cut off" in proc.stdout and "shape later" in proc.stdout
    assert "confirmed on 4 held-out items" in proc.stdout and "held out " in proc.stdout
    gen = run("generate", "Hello", "--no-chat", "--json", "--max-new-tokens", "3", "--config", str(out))
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert json.loads(gen.stdout)["layer_cutoff"] == settings["layer_cutoff"]
    impossible = run("tune", "--quick", "--target-agreement", "1.01")
    assert impossible.returncode == 2 and "[0, 1]" in impossible.stderr
