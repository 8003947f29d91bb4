"""Hooking a Hugging Face causal LM so that its token sequence is merged after one decoder layer.

Nothing of an architecture's forward is copied. Three hooks ride on the decoder's own loop:

    decoder pre-hook       note the 2D padding mask and how much the cache has already seen
    layer `cutoff` hook    prefill: merge its output (B, S, D) -> (B, S', D); decode: merge nothing
                           both: rebuild rotary embeddings and masks for the later layers, once per forward,
                           with the model's own rotary module and mask functions
    later layers' hooks    swap in those embeddings and masks

The cache of layers 0..cutoff holds the full prompt, that of later layers the merged prompt; decode steps append
their token to both. What a prefill learned (merged padding mask, position shift) stays for its decode steps.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from .merge import check_method, merge_sequence

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
POSITIONS = ("original", "reindex")
CACHES = ("merged", "recompute")
MASK_FUNCTIONS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


@dataclass(frozen=True)
class MergeSettings:
    """How a patched model merges. ``patch(model, **asdict(settings))`` re-applies it."""

    layer_cutoff: int
    keep_start: int = 0
    keep_end: int = 0
    positions: str = "original"  # later layers see each merged token at its pair's mean position, or "reindex"
    method: str = "slerp"  # or "mean", "drop"
    cache: str = "merged"  # or "recompute": no cache, the whole sequence merged again at every step


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
    if isinstance(s.layer_cutoff, bool) or not isinstance(s.layer_cutoff, int):
        raise ValueError(f"layer_cutoff must be an integer, got {s.layer_cutoff!r}")
    if not 0 <= s.layer_cutoff < num_layers:
        raise ValueError(f"layer_cutoff must be in 0..{num_layers - 1} (this model has {num_layers} layers), "
                         f"got {s.layer_cutoff}")
    for name in ("keep_start", "keep_end"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if s.positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}; got {s.positions!r}")
    if s.cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}; got {s.cache!r}")
    check_method(s.method)


class _Merger:
    """The state of one patched model: its hooks, and what the last prefill left for the decode steps."""

    def __init__(self, model, settings: MergeSettings):
        self.model, self.settings = model, settings
        self.decoder = model.model
        self.config = model.config
        types = layer_types(self.config)
        later = range(settings.layer_cutoff + 1, len(self.decoder.layers))
        self.mask_layer = {}  # layer type -> first later layer of that type: the cache the mask is sized on
        for i in later:
            self.mask_layer.setdefault(types[i], i)
        self.rotary_per_type = "layer_type" in inspect.signature(self.decoder.rotary_emb.forward).parameters

        self.handles = [
            model.register_forward_pre_hook(self._before_model, with_kwargs=True),
            self.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
            self.decoder.register_forward_hook(self._after_decoder),
            self.decoder.layers[settings.layer_cutoff].register_forward_hook(self._after_cutoff, with_kwargs=True),
        ]
        for i in later:
            self.handles.append(
                self.decoder.layers[i].register_forward_pre_hook(self._later_hook(types[i]), with_kwargs=True)
            )
        self.saved_use_cache = model.generation_config.use_cache
        if settings.cache == "recompute":
            model.generation_config.use_cache = False

        # Per forward.
        self.pad_mask: torch.Tensor | None = None  # (B, past + q) 2D padding mask as given, or None
        self.past = 0  # tokens the cache had seen before this forward
        self.later_kwargs: dict[str, dict] | None = None  # layer type -> kwargs for the later layers
        # Per prefill, kept for its decode steps.
        self.cache_ref = None
        self.prompt_len = self.merged_len = 0
        self.merged_mask: torch.Tensor | None = None  # (B, S') bool, None when the prompt had no padding
        self.shift: torch.Tensor | int = 0  # true position - position seen by the later layers

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
        self.later_kwargs = None

    def _after_decoder(self, module, args, output):
        self.later_kwargs = None  # release the masks

    def _after_cutoff(self, module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (B, q, D)
        batch, q, _ = hidden.shape
        cache = kwargs.get("past_key_values")
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(self.past, self.past + q, device=hidden.device)[None]
        positions = positions.expand(batch, q)
        if self.past == 0:
            hidden = self._prefill(hidden, positions, cache)
        else:
            self._decode(hidden, positions, cache)
            return None
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _later_hook(self, layer_type: str):
        def hook(module, args, kwargs):
            kwargs.update(self.later_kwargs[layer_type])
            return args, kwargs

        return hook

    # -- the two paths ----------------------------------------------------------------------------------------

    def _prefill(self, hidden: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        s = self.settings
        if self.pad_mask is not None and self.pad_mask.shape != hidden.shape[:2]:
            raise ValueError(f"attention_mask {tuple(self.pad_mask.shape)} does not match the input "
                             f"{tuple(hidden.shape[:2])}")
        merged = merge_sequence(hidden, self.pad_mask, s.keep_start, s.keep_end, s.method, positions)
        real = merged.plan.mask  # (B, S')
        new_positions = merged.positions
        self.shift = 0
        if s.positions == "reindex":
            new_positions = (real.long().cumsum(1) - 1).clamp(min=0)
            last_in = merged.plan.last.gather(1, _last_real(real)[:, None])  # input index of each row's last token
            self.shift = positions.gather(1, last_in) - new_positions.gather(1, _last_real(real)[:, None])
        self.cache_ref = weakref.ref(cache) if cache is not None else None
        self.prompt_len, self.merged_len = hidden.shape[1], merged.plan.length
        self.merged_mask = real if self.pad_mask is not None else None
        self._prepare_later(merged.hidden_states, new_positions, self.merged_mask, cache)
        return merged.hidden_states

    def _decode(self, hidden: torch.Tensor, positions: torch.Tensor, cache) -> None:
        if cache is None or self.cache_ref is None or self.cache_ref() is not cache:
            raise RuntimeError(
                "this cache was not filled by a merged prefill of this patched model; "
                "start generation from an empty cache while patched"
            )
        kv_mask = None
        if self.merged_mask is not None or self.pad_mask is not None:
            batch = hidden.shape[0]
            new = self.past + hidden.shape[1] - self.prompt_len  # tokens since the prompt, this step's included
            prefix = self.merged_mask
            if prefix is None:
                prefix = torch.ones(batch, self.merged_len, dtype=torch.bool, device=hidden.device)
            suffix = (self.pad_mask[:, self.prompt_len:].bool() if self.pad_mask is not None
                      else torch.ones(batch, new, dtype=torch.bool, device=hidden.device))
            kv_mask = torch.cat([prefix, suffix], dim=1)
        self._prepare_later(hidden, positions - self.shift, kv_mask, cache)

    def _prepare_later(self, hidden: torch.Tensor, positions: torch.Tensor, kv_mask, cache) -> None:
        """Rotary embeddings and masks for the later layers, from the model's own modules."""
        rotary = self.decoder.rotary_emb
        shared = None if self.rotary_per_type else rotary(hidden, positions)
        self.later_kwargs = {}
        for layer_type, layer_idx in self.mask_layer.items():
            mask = MASK_FUNCTIONS[layer_type](
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=kv_mask,
                past_key_values=cache,
                position_ids=None,  # fractional positions must not read as packed sequences
                layer_idx=layer_idx if cache is not None else None,
            )
            embeddings = shared if shared is not None else rotary(hidden, positions, layer_type)
            self.later_kwargs[layer_type] = dict(
                attention_mask=mask, position_embeddings=embeddings, position_ids=positions
            )


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) bool -> (B,) index of each row's last real token (0 for an empty row)."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, idx, 0).amax(1)


def patch(
    model,
    layer_cutoff: int,
    keep_start: int = 0,
    keep_end: int = 0,
    positions: str = "original",
    method: str = "slerp",
    cache: str = "merged",
):
    """Merge the token sequence of ``model`` after decoder layer ``layer_cutoff`` (0-based). Returns the model.

    The logits then cover the merged positions (B, S', vocab); the last one is always the real last token, so
    ``generate`` and pipelines work unchanged. ``unpatch`` undoes it exactly.
    """
    if hasattr(model, "_slerpmerge"):
        raise ValueError("model is already patched; call slerpmerge.unpatch(model) first")
    _check_model(model)
    settings = MergeSettings(layer_cutoff, keep_start, keep_end, positions, method, cache)
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


@contextlib.contextmanager
def merging(model, layer_cutoff: int, **kwargs) -> Iterator:
    """``with merging(model, layer_cutoff=8): ...`` patches for the block and always unpatches after it."""
    patch(model, layer_cutoff, **kwargs)
    try:
        yield model
    finally:
        unpatch(model)


