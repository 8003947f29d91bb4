"""One prompt under one setting: a patch method, or a baseline that shortens the prompt some other way.

A setting is a dict of patch keyword arguments whose `method` is a patch method (`slerpmerge.methods`) or one of
the baselines, each at the same number of tokens as the merge it is compared with:

    base      the whole prompt
    truncate  the first keep_start tokens and the last ones, `target` of the prompt in all (StreamingLLM's sinks
              and window, on the prompt)
    select    GemFilter: layers 0..layer_cutoff on the whole prompt score the tokens as `prune` does; the whole
              model then reads only the selected tokens (`target` of them, with the kept ends), as a new prompt
"""

from __future__ import annotations

import contextlib
import json
import math

import torch
from transformers import DynamicCache

from ..compat import cache_kwargs
from ..patching import merged_lengths, merging
from ..methods import METHODS
from ..plan import plan_select
from ..probe import Scoring
from ..settings import MergeSettings, label

BASELINES = ("base", "truncate", "select")


def key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def name(setting: dict) -> str:
    return label(setting) if setting["method"] != "base" else "base"


def check(setting: dict) -> dict:
    """A setting as given (from a flag or a file), checked: patch methods as patch checks them."""
    method = setting.get("method", "slerp")
    setting = {**setting, "method": method}
    if method in METHODS:
        MergeSettings.make(**setting).options  # noqa: B018  (raises on a bad option)
    elif method not in BASELINES:
        raise ValueError(f"method must be one of {', '.join([*METHODS, *BASELINES])}; got {method!r}")
    elif method != "base" and not 0 < setting.get("target", 0) <= 1:
        raise ValueError(f"{method} needs a target fraction in (0, 1]; got {setting.get('target')!r}")
    return setting


def truncate(ids: torch.Tensor, target: float, keep_start: int = 0) -> torch.Tensor:
    """(1, S) -> (1, ceil(target · S)): the first keep_start tokens and the last ones."""
    n = ids.shape[1]
    length = min(n, math.ceil(n * target))
    head = min(keep_start, length)
    return torch.cat([ids[:, :head], ids[:, n - (length - head):]], 1)


class _Stop(Exception):
    pass


@torch.inference_mode()
def select(model, ids: torch.Tensor, s: dict) -> torch.Tensor:
    """GemFilter's selection: run the decoder up to the cutoff layer on the whole prompt, score every token there
    by the attention of the last queries, and keep the best (with the kept ends) in their order."""
    settings = MergeSettings.make(**{**s, "method": "prune"})
    cutoff = settings.cutoffs[0]
    layer = model.model.layers[cutoff]
    scoring = Scoring(model.model.layers, model.config, settings, cutoff)

    def stop(module, args, output):
        raise _Stop

    handle = layer.register_forward_hook(stop)
    scoring.arm(True)
    try:
        model.model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
        scoring.remove()
    scores = scoring.importance(None)
    plan = plan_select(torch.ones_like(ids, dtype=torch.bool), scores, settings.keep_start, settings.keep_end,
                       settings.options["target"])
    return ids.gather(1, plan.first)


def prepared(model, ids: torch.Tensor, setting: dict):
    """The prompt the model reads under `setting`, and the context that patches it for the read."""
    method = setting["method"]
    if method == "base":
        return ids, contextlib.nullcontext()
    if method == "truncate":
        return truncate(ids, setting["target"], setting.get("keep_start", 0)), contextlib.nullcontext()
    if method == "select":
        return select(model, ids, setting), contextlib.nullcontext()
    return ids, merging(model, **setting)


@torch.inference_mode()
def prefill(model, ids: torch.Tensor, setting: dict) -> None:
    """One prefill as the setting does it, to the first token's logits: what `speed` times."""
    ids, patched = prepared(model, ids, setting)
    with patched:
        model(ids, **cache_kwargs(model, DynamicCache(config=model.config)), use_cache=True, logits_to_keep=1)


@torch.inference_mode()
def generate(model, ids: torch.Tensor, setting: dict, new_tokens: int, pad_id) -> tuple[torch.Tensor, list, int]:
    """Greedy generation: the first new token's logits (V,), the new tokens, and how many tokens the last layers
    saw (the merged length, or the shortened prompt's)."""
    short, patched = prepared(model, ids, setting)
    with patched:
        out = model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=max(1, new_tokens),
                             do_sample=False, pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True)
        length = merged_lengths(model)[-1] if setting["method"] in METHODS else short.shape[1]
    return out.logits[0][0], out.sequences[0, short.shape[1]:].tolist()[:new_tokens], length
