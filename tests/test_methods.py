"""The method registry feeds patch, the command line, eval and tune: a new row is seen by all of them."""

import torch
from tiny import tiny_model

import slerpmerge
from slerpmerge import methods
from slerpmerge.cli import build_parser
from slerpmerge.evaluate import PATCH_METHODS
from slerpmerge.tune import candidates


def test_every_method_patches_generates_and_is_offered_everywhere():
    model = tiny_model("qwen3")
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    choices = build_parser()._subparsers._group_actions[0].choices["generate"]._option_string_actions["--method"]
    tuned = {c.get("method", "slerp") for c in candidates(30)}
    for name, method in methods.METHODS.items():
        with slerpmerge.merging(model, layer_cutoff=1, keep_end=4, method=name):
            out = model.generate(ids, max_new_tokens=3, do_sample=False)
            assert out.shape == (1, 43)
            assert slerpmerge.patching.merged_lengths(model)[0] < 40
        assert name in choices.choices and name in PATCH_METHODS
        assert name in tuned or not method.tune


def test_a_new_row_is_a_new_method(monkeypatch):
    """One row (here: pairs combined by their first token) and patch, the flags and tune take it."""
    first = methods.Method("first", methods.pairs, lambda pairs, t: pairs[..., 0, :].contiguous(), False,
                           methods.PAIR_OPTIONS, "consecutive pairs, each the earlier token")
    monkeypatch.setitem(methods.METHODS, "first", first)
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    with slerpmerge.merging(model, layer_cutoff=3, method="first"):  # the last layer: logits of merged tokens
        merged = model(ids).logits
    assert merged.shape[1] == 11
    args = build_parser().parse_args(["generate", "hi", "--method", "first"])
    assert args.method == "first"
    assert any(c.get("method") == "first" for c in candidates(30, quick=True))
