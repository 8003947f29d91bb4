"""Merge settings: checks, the cutoff grid, labels, and the flags every command shares."""

import argparse
import json

import pytest

from slerpmerge import settings
from slerpmerge.settings import MergeSettings, check_options, cutoff_grid, label


def test_options_belong_to_their_methods():
    assert check_options("guided", {"target": 0.25})["protect"] == 0.5  # defaults filled in
    assert check_options("slerp", {}) == {"similarity": None, "ratio": None}
    with pytest.raises(ValueError, match="protect applies to method guided, guided-mean, not prune"):
        check_options("prune", {"protect": 0.5})
    with pytest.raises(ValueError, match="window is a number of tokens"):
        check_options("prune", {"window": 0})
    with pytest.raises(ValueError, match="method must be one of slerp, mean, drop, guided, guided-mean, prune"):
        check_options("fastv", {})


def test_kwargs_round_trip_through_make():
    s = MergeSettings.make([6, 15], keep_end=32, method="guided", target=0.25, heads=[1, 4])
    assert s.layer_cutoff == (6, 15) and s.heads == (1, 4)
    assert s.kwargs() == {"layer_cutoff": [6, 15], "keep_end": 32, "method": "guided", "target": 0.25,
                          "heads": [1, 4]}
    assert MergeSettings.make(**json.loads(json.dumps(s.kwargs()))) == s
    assert MergeSettings.make([7]).layer_cutoff == 7
    assert s.score_window == 32 and MergeSettings.make(3).score_window == 32
    assert MergeSettings.make(3, keep_end=8, window=4).score_window == 4
    with pytest.raises(ValueError, match="unknown merge settings: cutof"):
        MergeSettings.make(3, cutof=2)


def test_cutoff_grid_and_labels():
    assert cutoff_grid(30, (0.15, 0.4, 0.65, 0.85)) == [3, 11, 19, 25]
    assert cutoff_grid(4, (0.0, 1.0, 2.0)) == [0, 3]  # clipped to the layers there are
    assert label(dict(layer_cutoff=13, keep_start=4, keep_end=32, method="guided", target=0.25)) == \
        "guided @13 keep 4+32 target=0.25"
    assert label(dict(layer_cutoff=[6, 15], positions="reindex")) == "slerp @6,15 positions=reindex"
    assert label(dict(layer_cutoff=14, method="guided", mix={"score": "keynorm", "layer": 2, "heads": [0, 1]})) == \
        "guided @14 mix=keynorm@2:0,1"


def test_flags_override_the_config_which_overrides_the_defaults(tmp_path):
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    config = tmp_path / "best.json"
    config.write_text(json.dumps({"layer_cutoff": 9, "keep_end": 8, "method": "guided", "target": 0.25}))
    args = p.parse_args(["--config", str(config), "--keep-end", "16", "--heads", "1,3"])
    assert settings.from_args(args, {"layer_cutoff": 20, "keep_start": 4, "keep_end": 32}) == \
        {"layer_cutoff": 9, "keep_start": 4, "keep_end": 16, "method": "guided", "target": 0.25, "heads": [1, 3]}
    assert settings.from_args(p.parse_args(["--layer-cutoff", "6,15"]), {})["layer_cutoff"] == [6, 15]
    # another method than the defaults' takes their cutoff and ends, not the options chosen for their method
    scored = settings.default_settings(30)
    got = settings.from_args(p.parse_args(["--method", "slerp"]), scored)
    assert got == {"layer_cutoff": scored["layer_cutoff"], "keep_start": 4, "keep_end": 32, "method": "slerp"}
    settings.check_options("slerp", {k: got.get(k) for k in settings.OPTION_NAMES})  # accepted as it stands
    got = settings.from_args(p.parse_args(["--target", "0.5"]), scored)  # the same method: its options stay
    assert got == {**scored, "target": 0.5}
    with pytest.raises(SystemExit):
        p.parse_args(["--method", "fastv"])
    assert p.parse_args(["--mix", "keynorm@2:0,1"]).mix == {"score": "keynorm", "layer": 2, "heads": [0, 1]}
    assert p.parse_args(["--mix", "heavy"]).mix == {"score": "heavy"}
    with pytest.raises(SystemExit):
        p.parse_args(["--mix", "keynorm@two"])


def test_settings_with_a_mix_hash_by_value():
    """vLLM caches merged lengths by settings: a mix (a dict) must hash, equal settings alike."""
    mix = {"score": "keynorm", "layer": 2, "heads": [0]}
    a, b = MergeSettings.make(14, method="guided", mix=mix), MergeSettings.make(14, method="guided", mix=dict(mix))
    assert a == b and hash(a) == hash(b)
    assert hash(a) != hash(MergeSettings.make(14, method="guided", mix={**mix, "layer": 3}))


def test_terms_are_the_rankings_a_setting_reads():
    from slerpmerge.settings import Term

    assert MergeSettings.make(5).terms(5) == []  # slerp ranks nothing
    assert MergeSettings.make(5, method="prune").terms(5) == [Term("last", 5, None)]
    s = MergeSettings.make(5, method="guided", score_layer=3, heads=[1], mix={"score": "keynorm", "heads": [0, 2]})
    assert s.terms(5) == [Term("last", 3, (1,)), Term("keynorm", 3, (0, 2))]  # the mix's layer: the score layer's


# The four built-ins' shapes (their configs' sizes), for the ideal work of the no-calibration default.
BUILTIN_SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3)),
    "gemma3-270m": ("gemma3_text", dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                        sliding_window=512)),
    "qwen2.5-coder-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2)),
    "qwen2.5-coder-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                         num_attention_heads=12, num_key_value_heads=2)),
}


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4, 18, 24, 28, 30, 80])
def test_the_no_calibration_default_is_a_valid_scored_setting(num_layers):
    chosen = settings.default_settings(num_layers)
    s = MergeSettings.make(**chosen)
    settings.check_settings(s, num_layers, num_heads=4)
    assert s.method == "prune" and s.heads is None and s.mix.get("heads") is None  # every head: no calibration
    assert s.layer_cutoff == max(0, round(num_layers / 2) - 1)  # half the depth
    assert s.mix == {"score": "keynorm", "layer": min(2, s.layer_cutoff)}
    assert (s.keep_start, s.keep_end) == (4, 32) and 0.25 <= s.target <= 0.35
    assert s.words and s.chunk >= 40  # whole words, a UUID of 36 tokens among them


@pytest.mark.parametrize("name", BUILTIN_SHAPES)
def test_the_no_calibration_default_does_half_the_work_or_less(name):
    """Its ideal prefill speedup on each built-in's real shapes: at least 1.5x from 1024 to 4096 tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from slerpmerge.bench.ideal import ideal_speedup
    from slerpmerge.merge import merged_length

    kind, shape = BUILTIN_SHAPES[name]
    with torch.device("meta"):  # shapes only, no weights
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, vocab_size=64, **shape))
    s = MergeSettings.make(**settings.default_settings(shape["num_hidden_layers"]))
    for length in (1024, 2048, 4096):
        speedup = ideal_speedup(model, length, merged_length(length, s), s.layer_cutoff)
        assert 1.5 <= speedup < 1.7, (length, speedup)


def test_a_tiny_model_generates_with_the_no_calibration_default(tmp_path):
    import torch

    from slerpmerge.patching import merging
    from tiny import tiny_model, with_pieces

    model = with_pieces(tiny_model("llama"), tmp_path)
    ids = torch.randint(3, 128, (1, 96), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), merging(model, **settings.default_settings(model.config.num_hidden_layers)):
        out = model.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (1, 100) and all(torch.isfinite(x).all() for x in out.logits)
