"""The transformers adapter: the declared range is what CI installs, and both ways of sizing masks agree."""

import re
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet
from test_hooks import ids_and_mask
from tiny import tiny_model
from transformers import DynamicCache

import slerpmerge
from slerpmerge import compat
from slerpmerge.compat import TESTED_RANGE, Api, cache_kwargs

ROOT = Path(__file__).resolve().parents[1]


def pinned(name: str, constraints: str) -> str:
    text = (ROOT / "constraints" / constraints).read_text()
    return re.search(rf"^{name}==(\S+)$", text, re.M).group(1)


def test_the_declared_range_is_the_tested_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(d for d in project["dependencies"] if d.startswith("transformers"))
    assert SpecifierSet(spec.removeprefix("transformers")) == SpecifierSet(TESTED_RANGE)
    lowest, newest = pinned("transformers", "peers.txt"), pinned("transformers", "main.txt")
    lower = next(s.version for s in SpecifierSet(TESTED_RANGE) if s.operator == ">=")
    upper = next(s.version for s in SpecifierSet(TESTED_RANGE) if s.operator == "<")
    assert lowest.startswith(lower) and compat.tested(lowest)  # CI's second environment runs the lower bound
    major, minor = map(int, upper.split(".")[:2])
    assert newest.startswith(f"{major}.{minor - 1}.")  # the upper bound is the minor after the newest tested
    assert not compat.tested(upper) and not compat.tested("5.1.0")


@torch.no_grad()
def test_a_one_layer_view_sizes_masks_as_layer_idx_does():
    """Releases before 5.15 cannot be told which layer to size a mask on; the view of that one layer must give
    what `layer_idx` gives where it exists. Checked on a decode step, where the layers' caches differ in length."""
    model = tiny_model("gemma3", attn="eager")  # eager: a mask every step; sliding and full layers
    ids, mask = ids_and_mask([20, 13])
    api = Api.of(model.model)
    with slerpmerge.merging(model, layer_cutoff=0):
        cache = DynamicCache(config=model.config)
        model(ids, attention_mask=mask, **cache_kwargs(model, cache), use_cache=True)
    hidden = torch.zeros(2, 1, 64)
    kv_mask = torch.ones(2, 12, dtype=torch.bool)
    kv_mask[1, :3] = False
    # Layer 1 (full) holds the 11 merged tokens, so a new one sees 12 keys; layer 2 (sliding) a window of 8.
    for layer_type, layer, keys in (("sliding_attention", 2, 8), ("full_attention", 1, 12)):
        assert cache.get_seq_length(layer) < cache.get_seq_length(0)
        view = Api(api.cache_arg, api.mask_cache_arg, False, api.mask_cache_position)
        got = view.mask(layer_type, model.config, hidden, kv_mask, cache, layer, 11)
        assert got.shape[-1] == keys
        if api.mask_layer_idx:
            want = api.mask(layer_type, model.config, hidden, kv_mask, cache, layer, 11)
            torch.testing.assert_close(got, want)


def test_unknown_caches_are_refused():
    model = tiny_model("llama")
    api = Api.of(model.model)
    with pytest.raises(ValueError, match="needs a DynamicCache"):
        api.cache({api.cache_arg: object()})
    assert api.cache({}) is None
