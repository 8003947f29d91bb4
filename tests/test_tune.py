import json
import os
import subprocess
import sys

import pytest
import torch
from tiny import tiny_model

import slerpmerge
from slerpmerge.tune import candidates, pick, score


def test_every_candidate_patches():
    model = tiny_model("llama")
    model.config.num_hidden_layers = 4
    for settings in candidates(4) + candidates(30, quick=True):
        if max(slerpmerge.MergeSettings(**settings).cutoffs) < 4:
            with slerpmerge.merging(model, **settings):
                pass


def test_pick_takes_the_fastest_that_meets_the_target():
    results = [{"settings": {"layer_cutoff": c}, "agreement": a, "ideal_speedup": s}
               for c, a, s in [(1, 0.5, 2.0), (2, 0.92, 1.5), (3, 0.97, 1.2), (4, 0.91, 1.5)]]
    assert pick(results, 0.9)["settings"] == {"layer_cutoff": 2}  # ties on speed go to agreement
    assert pick(results, 0.95)["settings"] == {"layer_cutoff": 3}
    with pytest.raises(ValueError, match="best reached 0.97"):
        pick(results, 0.99)


def test_score_agrees_fully_at_the_last_layer():
    model = tiny_model("qwen3")
    ids = [torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    last = model.config.num_hidden_layers - 1
    (at_last, early), = [score(model, ids, [dict(layer_cutoff=last), dict(layer_cutoff=0)])]
    assert at_last["agreement"] == 1.0 and at_last["merged_length"] == 21
    assert early["ideal_speedup"] > at_last["ideal_speedup"] == pytest.approx(1.0)  # no layer after the last


def test_tune_command_writes_settings_that_patch_and_generate_read(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "best.json"
    run = lambda *a: subprocess.run([sys.executable, "-m", "slerpmerge", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, timeout=900)
    proc = run("tune", "--quick", "--length", "96", "--windows", "4", "--target-agreement", "0.5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    settings = json.loads(out.read_text())
    from slerpmerge.models import load

    model, _ = load("smollm2-135m")
    with slerpmerge.merging(model, **settings):
        assert slerpmerge.settings_of(model).keep_start == settings["keep_start"]
    gen = run("generate", "Hello", "--no-chat", "--json", "--max-new-tokens", "3", "--config", str(out))
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert json.loads(gen.stdout)["layer_cutoff"] == settings["layer_cutoff"]
    impossible = run("tune", "--quick", "--length", "64", "--windows", "2", "--target-agreement", "1.01")
    assert impossible.returncode == 2 and "[0, 1]" in impossible.stderr
