"""What differs between the transformers releases slerpmerge supports, found once and kept in one place.

Between the two ends of the tested range transformers renamed the cache argument of every decoder, layer and mask
function (``past_key_values`` -> ``cache``, 5.24), stopped passing ``cache_position`` (5.5) and let the mask
functions size a mask on a given layer's cache (``layer_idx``, 5.15). The adapter reads which of these the running
release has from the signatures, not from its version number, and a hook that meets something it does not know
raises an error naming the release and what was expected, rather than taking a decode step for a prefill.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import transformers
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

# The range pyproject declares: CI runs the suite on its lowest release and on the constraints file's newest.
TESTED_RANGE = ">=5.2,<5.26"
CACHE_NAMES = ("cache", "past_key_values")  # newest first
MASK_FUNCTIONS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def version() -> str:
    return transformers.__version__


def tested(release: str | None = None) -> bool:
    """Whether a transformers release lies in the range CI tests."""
    from packaging.specifiers import SpecifierSet

    return (release or version()) in SpecifierSet(TESTED_RANGE)


class UnknownTransformers(RuntimeError):
    """The running transformers hands a hook something slerpmerge does not know how to read."""

    def __init__(self, what: str):
        super().__init__(f"{what} (transformers {version()}; slerpmerge is tested on transformers {TESTED_RANGE}: "
                         f"install a tested release, e.g. pip install -c constraints/main.txt transformers)")


def _cache_name(function, what: str) -> str:
    params = inspect.signature(function).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise UnknownTransformers(f"{what} takes the cache under none of the names slerpmerge knows "
                              f"({', '.join(CACHE_NAMES)})")


def cache_kwargs(model, cache) -> dict:
    """``model(ids, **cache_kwargs(model, cache))``: the cache under the name the running release reads."""
    return {_cache_name(model.forward, f"{type(model).__name__}.forward"): cache}


def generated_cache(output):
    """The cache a ``generate(..., return_dict_in_generate=True)`` output holds."""
    return output["cache"] if "cache" in output else output["past_key_values"]


@dataclass(frozen=True)
class Api:
    """How the running transformers passes the cache and builds masks."""

    cache_arg: str  # the keyword under which the model, decoder and layers receive the cache
    mask_cache_arg: str  # the keyword of the mask functions' cache
    mask_layer_idx: bool  # the mask functions size a mask on layer `layer_idx` (5.15 on)
    mask_cache_position: bool  # the mask functions take the queries' cache positions (before 5.13)

    @classmethod
    def of(cls, decoder) -> "Api":
        mask = inspect.signature(create_causal_mask).parameters
        return cls(
            cache_arg=_cache_name(decoder.forward, f"{type(decoder).__name__}.forward"),
            mask_cache_arg=_cache_name(create_causal_mask, "create_causal_mask"),
            mask_layer_idx="layer_idx" in mask,
            mask_cache_position="cache_position" in mask,
        )

    def cache(self, kwargs: dict):
        """The DynamicCache a hook's kwargs carry, or None; anything else raises."""
        cache = kwargs.get(self.cache_arg)
        if cache is None:
            strays = [k for k, v in kwargs.items() if isinstance(v, transformers.cache_utils.Cache)]
            if strays:
                raise UnknownTransformers(f"a cache arrived as {strays[0]!r}, where slerpmerge reads "
                                          f"{self.cache_arg!r}")
            return None
        if type(cache) is not DynamicCache:
            raise ValueError(f"a patched model needs a DynamicCache (the default); got {type(cache).__name__}")
        return cache

    def mask(self, layer_type: str, config, hidden: torch.Tensor, kv_mask: torch.Tensor | None, cache,
             layer_idx: int, query_start: int) -> torch.Tensor | None:
        """The model's own mask for layer ``layer_idx`` (of ``layer_type``): its ``hidden.shape[1]`` queries sit at
        cache positions ``query_start``.. of that layer's cache; ``kv_mask`` (B, kv) marks real keys."""
        kwargs = dict(config=config, inputs_embeds=hidden, attention_mask=kv_mask,
                      position_ids=None)  # fractional positions must not read as packed sequences
        if cache is not None and self.mask_layer_idx:
            kwargs["layer_idx"] = layer_idx
        elif cache is not None:
            cache = _OneLayer(cache, layer_idx, layer_type == "sliding_attention")
        kwargs[self.mask_cache_arg] = cache
        if self.mask_cache_position:
            q = hidden.shape[1]
            kwargs["cache_position"] = torch.arange(query_start, query_start + q, device=hidden.device)
        return MASK_FUNCTIONS[layer_type](**kwargs)


class _OneLayer:
    """A cache as the mask functions of releases before 5.15 see it when they should size a mask on one layer: they
    take the first layer of the kind they build for, so this view has only that one."""

    is_compileable = False
    is_linear = is_dummy = [False]  # asked by the 5.2x mask functions when they get no layer_idx

    def __init__(self, cache: DynamicCache, layer_idx: int, sliding: bool):
        self.cache, self.layer_idx, self.is_sliding = cache, layer_idx, [sliding]

    def get_mask_sizes(self, queries, layer_idx: int = 0) -> tuple[int, int]:
        return self.cache.get_mask_sizes(queries, self.layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:  # 5.5 to 5.14 place the queries after this many keys
        return self.cache.get_seq_length(self.layer_idx)

    get_query_offset = get_seq_length  # and 5.15 on, under this name
