"""Hooking a Hugging Face causal LM so that its token sequence is merged after a decoder layer (or several).

Nothing of an architecture's forward is copied. Three kinds of hooks ride on the decoder's own loop:

    decoder pre-hook       note the 2D padding mask and how much the cache has already seen
    each cutoff's hook     prefill: merge its output (B, S, D) -> (B, S', D); decode: merge nothing
                           both: say what rotary embeddings and masks the layers up to the next cutoff need
    later layers' hooks    swap those in, built once per forward and layer type with the model's own rotary
                           module and mask functions; an unpadded decode step under SDPA keeps the decoder's own

The cache of layers 0..cutoff holds the full prompt, that of later layers the merged prompt (merged again after
each further cutoff); decode steps append their token to all. What a prefill learned (merged padding masks,
position shifts) stays for its decode steps.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from .merge import check_keeps, check_method, check_similarity, merge_sequence

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
POSITIONS = ("original", "reindex")
CACHES = ("merged", "recompute")
MASK_FUNCTIONS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


@dataclass(frozen=True)
class MergeSettings:
    """How a patched model merges. ``patch(model, **asdict(settings))`` re-applies it."""

    layer_cutoff: int | tuple[int, ...]  # merge after this layer; several: merge again after each
    keep_start: int = 0
    keep_end: int = 0
    positions: str = "original"  # later layers see each merged token at its pair's mean position, or "reindex"
    method: str = "slerp"  # or "mean", "drop"
    cache: str = "merged"  # or "recompute": no cache, the whole sequence merged again at every step
    similarity: float | None = None  # merge only pairs whose hidden states' cosine reaches this
    ratio: float | None = None  # or only this fraction of the pairs, the most similar first

    @property
    def cutoffs(self) -> tuple[int, ...]:
        c = self.layer_cutoff
        return tuple(c) if isinstance(c, (list, tuple)) else (c,)


def layer_types(config) -> list[str]:
    """Attention type of every decoder layer, as the model's forward chooses its masks."""
    types = getattr(config, "layer_types", None)
    if types is None:
        kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
        types = [kind] * config.num_hidden_layers
    return list(types)


def _check_model(model) -> None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"slerpmerge cannot drive model type {model_type!r} ({type(model).__name__}); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} causal LMs"
        )
    decoder = getattr(model, "model", None)
    for part in ("layers", "rotary_emb", "norm"):
        if not hasattr(decoder, part):
            raise ValueError(f"{type(model).__name__} has no model.{part}: not a decoder slerpmerge can drive")
    attn = config._attn_implementation
    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {attn!r} is not supported; load the model with "
            f"attn_implementation in {ATTENTION_IMPLEMENTATIONS}"
        )
    if getattr(config, "use_bidirectional_attention", False) or not getattr(config, "is_causal", True):
        raise ValueError("slerpmerge needs causal attention; this model is configured bidirectional")
    unknown = set(layer_types(config)) - set(MASK_FUNCTIONS)
    if unknown:
        raise ValueError(f"layer types {sorted(unknown)} are not supported; supported: {sorted(MASK_FUNCTIONS)}")


def _check_settings(s: MergeSettings, num_layers: int) -> None:
    cutoffs = s.cutoffs
    if not cutoffs or any(isinstance(c, bool) or not isinstance(c, int) for c in cutoffs):
        raise ValueError(f"layer_cutoff must be an integer or a list of integers, got {s.layer_cutoff!r}")
    for c in cutoffs:
        if not 0 <= c < num_layers:
            raise ValueError(f"layer_cutoff must be in 0..{num_layers - 1} (this model has {num_layers} layers), "
                             f"got {c}")
    if list(cutoffs) != sorted(set(cutoffs)):
        raise ValueError(f"several layer cutoffs must be strictly increasing, got {list(cutoffs)}")
    check_keeps(s.keep_start, s.keep_end)
    if s.positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}; got {s.positions!r}")
    if s.cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}; got {s.cache!r}")
    check_method(s.method)
    check_similarity(s.similarity, s.ratio)


@dataclass
class _Stage:
    """One merge point: its cutoff, the later layers it feeds, and what its prefill left for decoding."""

    cutoff: int
    mask_layer: dict  # layer type -> first layer of that type it feeds: the cache its masks are sized on
    merged_mask: torch.Tensor | None = None  # (B, S_k) bool, None when no row is padded
    merged_len: int = 0
    shift: torch.Tensor | int = 0  # true position - position its layers see
    # This forward: what its layers' masks and rotary embeddings are built from, and those built so far (per type).
    inputs: tuple | None = None  # (hidden (B, q, D), positions (B, q), 2D kv mask (or its maker) or None, cache)
    built: dict | None = None  # layer type -> kwargs for its layers
    reuse: bool = False  # a decode step whose layers may keep the decoder's own kwargs where its mask is None


class _Merger:
    """The state of one patched model: its hooks, and what the last prefill left for the decode steps."""

    def __init__(self, model, settings: MergeSettings):
        self.model, self.settings = model, settings
        self.decoder = model.model
        self.config = model.config
        types = layer_types(self.config)
        num_layers = len(self.decoder.layers)
        bounds = [*settings.cutoffs, num_layers - 1]
        self.stages = []
        for k, cutoff in enumerate(settings.cutoffs):
            stage = _Stage(cutoff, {})
            for i in range(cutoff + 1, bounds[k + 1] + 1):
                stage.mask_layer.setdefault(types[i], i)
            self.stages.append(stage)
        self.rotary_per_type = "layer_type" in inspect.signature(self.decoder.rotary_emb.forward).parameters

        self.handles = [
            model.register_forward_pre_hook(self._before_model, with_kwargs=True),
            self.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
            self.decoder.register_forward_hook(self._after_decoder),
        ]
        for k, stage in enumerate(self.stages):
            layer = self.decoder.layers[stage.cutoff]
            self.handles.append(layer.register_forward_hook(self._cutoff_hook(k), with_kwargs=True))
            for i in range(stage.cutoff + 1, bounds[k + 1] + 1):
                hook = self._later_hook(stage, types[i])
                self.handles.append(self.decoder.layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        self.saved_use_cache = model.generation_config.use_cache
        if settings.cache == "recompute":
            model.generation_config.use_cache = False

        # Per forward.
        self.pad_mask: torch.Tensor | None = None  # (B, past + q) 2D padding mask as given, or None
        self.past = 0  # tokens the cache had seen before this forward
        self.mask: torch.Tensor | None = None  # the current sequence's padding mask (B, S_k), or None
        self.positions: torch.Tensor | None = None  # the current sequence's true (mean) positions (B, S_k)
        # Per prefill, kept for its decode steps.
        self.cache_ref = None
        self.prompt_len = 0

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.model.generation_config.use_cache = self.saved_use_cache

    # -- hooks ------------------------------------------------------------------------------------------------

    def _before_model(self, module, args, kwargs):
        if kwargs.get("labels") is not None:
            raise ValueError("a merged model's logits cover the merged positions: pass no labels while patched")

    def _before_decoder(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
            raise ValueError("a patched model takes a 2D (batch, seq) attention_mask; got a prepared mask")
        cache = kwargs.get("past_key_values")
        if cache is not None and type(cache) is not DynamicCache:
            raise ValueError(f"a patched model needs a DynamicCache (the default); got {type(cache).__name__}")
        self.pad_mask = mask
        self.past = cache.get_seq_length() if cache is not None else 0

    def _after_decoder(self, module, args, output):
        for stage in self.stages:
            stage.inputs = stage.built = None  # release the masks
        self.mask = self.positions = None

    def _cutoff_hook(self, k: int):
        def hook(module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output  # (B, q, D)
            cache = kwargs.get("past_key_values")
            if self.past == 0:
                if k == 0:
                    self._start_prefill(hidden, kwargs.get("position_ids"), cache)
                hidden = self._prefill(self.stages[k], hidden, cache)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            if k == 0:  # later cutoffs' kwargs hold positions already shifted for their stage: keep the true ones
                self.positions = kwargs.get("position_ids")
            self._decode(self.stages[k], hidden, self.positions, cache)
            return None

        return hook

    def _later_hook(self, stage: _Stage, layer_type: str):
        def hook(module, args, kwargs):
            own = stage.built.get(layer_type)
            if own is None:
                # A decoder mask of None means no padding and nothing hidden from a one-token query: true of the
                # shorter merged cache as well, and with no position shift the decoder's rotary fits too.
                if stage.reuse and kwargs.get("attention_mask") is None:
                    return None
                own = stage.built[layer_type] = self._layer_kwargs(stage, layer_type)
            kwargs.update(own)
            return args, kwargs

        return hook

    # -- the two paths ----------------------------------------------------------------------------------------

    def _start_prefill(self, hidden: torch.Tensor, positions: torch.Tensor | None, cache) -> None:
        batch, q, _ = hidden.shape
        if self.pad_mask is not None and self.pad_mask.shape != (batch, q):
            raise ValueError(f"attention_mask {tuple(self.pad_mask.shape)} does not match the input {(batch, q)}")
        if positions is None:
            positions = torch.arange(q, device=hidden.device)[None]
        self.positions = positions.expand(batch, q)
        self.mask = self.pad_mask
        self.cache_ref = weakref.ref(cache) if cache is not None else None
        self.prompt_len = q

    def _prefill(self, stage: _Stage, hidden: torch.Tensor, cache) -> torch.Tensor:
        s = self.settings
        merged = merge_sequence(hidden, self.mask, s.keep_start, s.keep_end, s.method, self.positions,
                                s.similarity, s.ratio)
        real = merged.plan.mask  # (B, S_k)
        seen = merged.positions
        stage.shift = 0
        if s.positions == "reindex":
            seen = (real.long().cumsum(1) - 1).clamp(min=0)
            last = _last_real(real)[:, None]
            stage.shift = merged.positions.gather(1, last).round().long() - seen.gather(1, last)
        stage.merged_len = merged.plan.length
        stage.merged_mask = None if bool(real.all()) else real
        self.mask, self.positions = stage.merged_mask, merged.positions
        self._build_later(stage, merged.hidden_states, seen, stage.merged_mask, cache, reuse=False)
        return merged.hidden_states

    def _decode(self, stage: _Stage, hidden: torch.Tensor, positions: torch.Tensor | None, cache) -> None:
        if cache is None or self.cache_ref is None or self.cache_ref() is not cache:
            raise RuntimeError(
                "this cache was not filled by a merged prefill of this patched model; "
                "start generation from an empty cache while patched"
            )
        batch, q, _ = hidden.shape
        if positions is None:
            positions = torch.arange(self.past, self.past + q, device=hidden.device)[None]
        positions = positions.expand(batch, q)
        shifted = not isinstance(stage.shift, int) or stage.shift != 0
        if shifted:
            positions = positions - stage.shift
        kv_mask = None
        if stage.merged_mask is not None or self.pad_mask is not None:  # built only if a layer needs a mask
            kv_mask = functools.partial(self._decode_kv_mask, stage, batch, q, hidden.device)
        self._build_later(stage, hidden, positions, kv_mask, cache, reuse=stage.merged_mask is None and not shifted)

    def _decode_kv_mask(self, stage: _Stage, batch: int, q: int, device: torch.device) -> torch.Tensor:
        """(B, S_k + new) 2D mask of the stage's cache: its merged prompt, then the tokens since."""
        new = self.past + q - self.prompt_len  # tokens since the prompt, this step's included
        prefix = stage.merged_mask
        if prefix is None:
            prefix = torch.ones(batch, stage.merged_len, dtype=torch.bool, device=device)
        suffix = (self.pad_mask[:, self.prompt_len:].bool() if self.pad_mask is not None
                  else torch.ones(batch, new, dtype=torch.bool, device=device))
        return torch.cat([prefix, suffix], dim=1)

    def _build_later(self, stage: _Stage, hidden, positions, kv_mask, cache, reuse: bool) -> None:
        """Set what the stage's layers see this forward; their kwargs are built on first use, once per type."""
        stage.inputs, stage.built, stage.reuse = (hidden, positions, kv_mask, cache), {}, reuse
        if not reuse:  # build now, while `hidden` is the stage's input
            for layer_type in stage.mask_layer:
                stage.built[layer_type] = self._layer_kwargs(stage, layer_type)

    def _layer_kwargs(self, stage: _Stage, layer_type: str) -> dict:
        """Rotary embeddings and mask for a stage's layers of one type, from the model's own modules."""
        hidden, positions, kv_mask, cache = stage.inputs
        if callable(kv_mask):  # a decode step's, made on first need
            kv_mask = kv_mask()
            stage.inputs = (hidden, positions, kv_mask, cache)
        layer_idx = stage.mask_layer[layer_type]
        mask = MASK_FUNCTIONS[layer_type](
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=kv_mask,
            past_key_values=cache,
            position_ids=None,  # fractional positions must not read as packed sequences
            layer_idx=layer_idx if cache is not None else None,
        )
        rotary = self.decoder.rotary_emb
        if self.rotary_per_type:
            embeddings = rotary(hidden, positions, layer_type)
        else:
            shared = next((b["position_embeddings"] for b in stage.built.values()), None)
            embeddings = shared if shared is not None else rotary(hidden, positions)
        return dict(attention_mask=mask, position_embeddings=embeddings, position_ids=positions)


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) bool -> (B,) index of each row's last real token (0 for an empty row)."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, idx, 0).amax(1)


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
):
    """Merge the token sequence of ``model`` after decoder layer ``layer_cutoff`` (0-based; a list merges again
    after each). Returns the model.

    The logits then cover the merged positions (B, S', vocab); the last one is always the real last token, so
    ``generate`` and pipelines work unchanged. ``unpatch`` undoes it exactly.
    """
    if hasattr(model, "_slerpmerge"):
        raise ValueError("model is already patched; call slerpmerge.unpatch(model) first")
    _check_model(model)
    if isinstance(layer_cutoff, (list, tuple)):
        layer_cutoff = layer_cutoff[0] if len(layer_cutoff) == 1 else tuple(layer_cutoff)
    settings = MergeSettings(layer_cutoff, keep_start, keep_end, positions, method, cache, similarity, ratio)
    _check_settings(settings, len(model.model.layers))
    model._slerpmerge = _Merger(model, settings)
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
    return [stage.merged_len for stage in merger.stages]


@contextlib.contextmanager
def merging(model, layer_cutoff: int, **kwargs) -> Iterator:
    """``with merging(model, layer_cutoff=8): ...`` patches for the block and always unpatches after it."""
    patch(model, layer_cutoff, **kwargs)
    try:
        yield model
    finally:
        unpatch(model)


