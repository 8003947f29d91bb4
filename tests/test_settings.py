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
