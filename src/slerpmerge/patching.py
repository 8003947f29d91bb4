"""The public way in: `patch`, `unpatch` and `merging`, and what a patched model can say about itself."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

from . import compat
from .architecture import check_model
from .hooks import Merger
from .settings import MergeSettings, check_settings


def patch(
    model,
    layer_cutoff: int | list[int],
    keep_start: int = 0,
    keep_end: int = 0,
    positions: str = "original",
    method: str = "slerp",
    cache: str = "merged",
    similarity: float | None = None,
    ratio: float | None = None,
    target: float | None = None,
    protect: float | None = None,
    score: str | None = None,
    score_layer: int | None = None,
    mix: dict | None = None,
    window: int | None = None,
    heads: Sequence[int] | None = None,
    spread: int | None = None,
    chunk: int | None = None,
    words: bool | None = None,
):
    """Shorten the token sequence of ``model`` after decoder layer ``layer_cutoff`` (0-based; a list shortens
    again after each). Returns the model. See `MergeSettings` for the arguments and `slerpmerge.methods` for the
    methods.

    The logits then cover the merged positions (B, S', vocab); the last one is always the real last token, so
    ``generate`` and pipelines work unchanged. ``unpatch`` undoes it exactly.
    """
    if hasattr(model, "_slerpmerge"):
        raise ValueError("model is already patched; call slerpmerge.unpatch(model) first")
    check_model(model)
    if not compat.tested():
        warnings.warn(f"slerpmerge is tested on transformers {compat.TESTED_RANGE}, not {compat.version()}: "
                      "check generations with `slerpmerge doctor`", stacklevel=2)
    settings = MergeSettings.make(layer_cutoff, keep_start=keep_start, keep_end=keep_end, positions=positions,
                                  method=method, cache=cache, similarity=similarity, ratio=ratio, target=target,
                                  protect=protect, score=score, score_layer=score_layer, mix=mix, window=window,
                                  heads=heads, spread=spread, chunk=chunk, words=words)
    check_settings(settings, len(model.model.layers), model.config.num_attention_heads)
    model._slerpmerge = Merger(model, settings)
    return model


def unpatch(model):
    """Remove the hooks and restore the generation defaults. Returns the model."""
    merger = getattr(model, "_slerpmerge", None)
    if merger is None:
        raise ValueError("model is not patched by slerpmerge")
    merger.remove()
    del model._slerpmerge
    return model


def settings_of(model) -> MergeSettings | None:
    """The settings a model is patched with, or None."""
    merger = getattr(model, "_slerpmerge", None)
    return merger.settings if merger is not None else None


def merged_lengths(model) -> list[int]:
    """How many tokens each stage's layers saw in the patched model's last prefill (one stage per cutoff)."""
    merger = getattr(model, "_slerpmerge", None)
    if merger is None:
        raise ValueError("model is not patched by slerpmerge")
    return [record.length for record in merger.prefill]


@contextlib.contextmanager
def merging(model, layer_cutoff: int, **kwargs) -> Iterator:
    """``with merging(model, layer_cutoff=8): ...`` patches for the block and always unpatches after it."""
    patch(model, layer_cutoff, **kwargs)
    try:
        yield model
    finally:
        unpatch(model)


