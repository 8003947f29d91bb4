"""The hooks that shorten a Hugging Face causal LM's token sequence after a decoder layer (or several).

Nothing of an architecture's forward is copied. Three kinds of hooks ride on the decoder's own loop:

    decoder pre-hook       note the 2D padding mask and how much the cache has already seen
    each cutoff's hook     prefill: merge its output (B, S, D) -> (B, S', D); decode: merge nothing
                           both: say what rotary embeddings and masks the layers up to the next cutoff need
    later layers' hooks    swap those in, built once per forward and layer type with the model's own rotary
                           module and mask functions; an unpadded decode step under SDPA keeps the decoder's own

The cache of layers 0..cutoff holds the full prompt, that of later layers the merged prompt (merged again after
each further cutoff); decode steps append their token to all. What a prefill learned (merged padding masks,
position shifts, each entry's true position) stays for its decode steps. A sliding-window layer after a cutoff slides
over true positions: its window of W tokens holds fewer than W merged entries, the text the base model's layer sees.

A context kept for reselection (`read`) stops at the cutoff: the early layers' cache and the cutoff's output are all
it keeps. A question then continues it (`reselect`): the early layers run on the question's tokens against that
cache, the context's tokens are ranked by the question's own queries and planned as a prefill would plan them, and
the later layers read the chosen tokens and the whole question as the prefill of both.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from . import methods
from .architecture import layer_types
from .compat import Api, UnknownTransformers
from .merge import merge_sequence
from .probe import Scoring
from .rules import NO_BOS, lacks_bos, leading_bos, within_window
from .settings import MergeSettings

@dataclass
class _Stage:
    """One merge point: its cutoff and the layers it feeds, up to the next cutoff."""

    cutoff: int
    layers: dict  # layer index -> layer type, for every layer the stage feeds
    mask_layer: dict  # layer type -> the first of its layers of that type: the cache its masks are sized on


@dataclass
class _Prefill:
    """What a stage's prefill leaves for the decode steps that continue it."""

    mask: torch.Tensor | None  # (B, S_k) bool: real tokens of the merged prompt; None when no row is padded
    length: int  # S_k, the merged prompt's length: what the stage's caches hold of the prompt
    shift: torch.Tensor | int  # (B, 1): true position - position the stage's layers see ("reindex"), else 0
    positions: torch.Tensor  # (B, S_k) float: each entry's true (mean) position


@dataclass
class Kept:
    """A context read up to the cutoff (`Merger.read`), for questions to choose their own tokens from."""

    hidden: torch.Tensor  # (B, S, D): the cutoff's output for every context token
    mask: torch.Tensor | None  # (B, S) bool real tokens, or None when no row is padded
    positions: torch.Tensor  # (B, S): the tokens' true positions
    keys: dict  # score layer -> (B, H_kv, S, d) its keys, where its (sliding) cache does not hold them all
    held: tuple  # entries each layer's cache held after the read (`held`): a press that changes one is caught


class _Read(Exception):
    """Raised at the cutoff of a read: the later layers have nothing to do."""

    def __init__(self, kept: Kept):
        self.kept = kept


@dataclass
class _Forward:
    """One call of the decoder, from its pre-hook to its forward hook."""

    pad_mask: torch.Tensor | None  # (B, past + q) 2D padding mask as given, or None
    past: int  # tokens the cache held before this call: 0 for a prefill
    queries: int  # q, the tokens this call adds
    # Filled as the call goes through the cutoffs:
    cache: DynamicCache | None = None  # the cache the layers receive (the decoder makes one when given none)
    positions: torch.Tensor | None = None  # (B, q) true positions of this call's tokens (prefill: of the sequence
    # as the next cutoff receives it, i.e. merged means after each stage)
    mask: torch.Tensor | None = None  # prefill: (B, S_k) padding mask of that sequence, or None
    reselect: bool = False  # a question continuing a kept context: the first cutoff chooses its tokens


@dataclass
class _LayerInputs:
    """What a stage's layers are given in one call, built once per layer type on first need."""

    hidden: torch.Tensor  # (B, q_k, D): the stage's input, for the mask's batch size and dtype
    positions: torch.Tensor  # (B, q_k): positions its layers see
    kv_mask: torch.Tensor | None | Callable  # (B, kv) real keys of its cache, or a function that makes it
    query_start: int  # where this call's tokens sit in the stage's cache
    reuse: bool  # a decode step whose layers keep the decoder's own mask and rotary where its mask is None
    entries: torch.Tensor | None  # (B, n) true position of every entry of the stage's cache, this call's last: for
    # its sliding layers, where a window in entries would span more text than the model's; else None
    built: dict = field(default_factory=dict)  # layer type -> kwargs for its layers


class Merger:
    """The hooks of one patched model, and what the last prefill left for its decode steps."""

    def __init__(self, model, settings: MergeSettings):
        self.model, self.settings = model, settings
        self.decoder = model.model
        self.config = model.config
        self.api = Api.of(self.decoder)
        types = layer_types(self.config)
        # Scored methods: probes on each cutoff layer (or the layers its rankings read) catch queries and keys.
        self.scorings = [Scoring(self.decoder.layers, self.config, settings, c)
                         for c in settings.cutoffs] if methods.get(settings.method).scored else []
        bounds = [*settings.cutoffs, len(self.decoder.layers) - 1]
        self.stages = []
        for k, cutoff in enumerate(settings.cutoffs):
            layers = {i: types[i] for i in range(cutoff + 1, bounds[k + 1] + 1)}
            mask_layer = {}
            for i, kind in layers.items():
                mask_layer.setdefault(kind, i)
            self.stages.append(_Stage(cutoff, layers, mask_layer))
        self.rotary_per_type = "layer_type" in inspect.signature(self.decoder.rotary_emb.forward).parameters

        self.handles = [
            model.register_forward_pre_hook(self._before_model, with_kwargs=True),
            self.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
            self.decoder.register_forward_hook(self._after_decoder),
        ]
        for k, stage in enumerate(self.stages):
            layer = self.decoder.layers[stage.cutoff]
            self.handles.append(layer.register_forward_hook(self._cutoff_hook(k), with_kwargs=True))
            for i, kind in stage.layers.items():
                hook = self._later_hook(k, kind)
                self.handles.append(self.decoder.layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        self.saved_use_cache = model.generation_config.use_cache
        if settings.cache == "recompute":
            model.generation_config.use_cache = False

        self.call: _Forward | None = None  # the decoder call under way
        self.inputs: list[_LayerInputs | None] = [None] * len(self.stages)  # per stage, for that call
        # The last prefill, kept for its decode steps:
        self.prefill: list[_Prefill] = []  # per stage
        self.prefill_cache = None  # a weak reference to the cache it filled
        self.prompt_len = 0  # S, the prompt's length before any merge
        self.since_prompt = 0  # tokens fed since the prompt (counted: a compressed cache would under-count them)
        self.right_padded = False
        self.bos = leading_bos(str(getattr(model, "name_or_path", "") or ""))  # warned about once, then None
        self.reading = False  # the next prefill stops at the cutoff (`read`)
        self.pending = None  # (Kept, weak reference to the cache its question runs on), until that forward
        self.kept: Kept | None = None  # the kept context the call under way continues

    def snapshot(self) -> dict:
        """What the last prefill left for its decode steps, for `resume` to continue a copy of its cache."""
        return dict(settings=self.settings, prefill=list(self.prefill), prompt_len=self.prompt_len,
                    right_padded=self.right_padded)

    def resume(self, state: dict, cache) -> None:
        """Continue ``cache``, a copy of the cache a prefill filled, from that prefill's `snapshot`."""
        self.prefill = list(state["prefill"])
        self.prefill_cache = weakref.ref(cache)
        self.prompt_len, self.since_prompt, self.right_padded = state["prompt_len"], 0, state["right_padded"]

    def read(self, forward: Callable[[], object]) -> Kept:
        """Run ``forward`` (a prefill of a context into an empty cache) up to the first cutoff only, and keep what a
        question needs to choose its own tokens: the cutoff's output and the context's keys at the score layers."""
        self.reading = True
        try:
            forward()
        except _Read as done:
            return done.kept
        finally:
            self.reading, self.call, self.inputs = False, None, [None] * len(self.stages)
            for scoring in self.scorings:
                scoring.arm(False)
                scoring.clear()
        raise RuntimeError("the forward ended without reaching the cutoff")

    def reselect(self, kept: Kept, cache) -> None:
        """Let the next forward on ``cache`` (a copy of a read's cache) choose the context's tokens by its queries."""
        self.pending = (kept, weakref.ref(cache))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for scoring in self.scorings:
            scoring.remove()
        self.model.generation_config.use_cache = self.saved_use_cache

    # -- hooks ------------------------------------------------------------------------------------------------

    def _before_model(self, module, args, kwargs):
        if kwargs.get("labels") is not None:
            raise ValueError("a merged model's logits cover the merged positions: pass no labels while patched")

    def _before_decoder(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
            raise ValueError("a patched model takes a 2D (batch, seq) attention_mask; got a prepared mask")
        cache = self.api.cache(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        tokens = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if tokens is None and args:
            tokens = args[0]
        queries = tokens.shape[1]
        if mask is not None and cache is None and mask.shape[1] > queries:
            raise UnknownTransformers(
                f"a decode step arrived (an attention mask over {mask.shape[1]} tokens for {queries} new ones) "
                f"with no cache under {self.api.cache_arg!r}")
        if past == 0 and self.bos is not None and kwargs.get("input_ids") is not None:
            self._check_bos(kwargs["input_ids"], mask)
        self.call = _Forward(mask, past, queries)
        if self.pending is not None and self.pending[1]() is cache:  # a question on a kept context
            kept, self.pending = self.pending[0], None
            if past != kept.hidden.shape[1]:
                raise ValueError(f"a question continues its context from the context's end ({kept.hidden.shape[1]} "
                                 f"tokens), not from {past}")
            self.call.reselect, self.kept = True, kept
        for scoring in self.scorings:
            scoring.arm(past == 0 or self.call.reselect)

    def _check_bos(self, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        first = ids[:, 0] if mask is None else ids.gather(1, mask.int().argmax(1, keepdim=True))[:, 0]  # (B,)
        if lacks_bos(first, self.bos):
            warnings.warn(NO_BOS.format(bos=self.bos), stacklevel=4)
            self.bos = None

    def _after_decoder(self, module, args, output):
        if self.call.past > 0:
            self.since_prompt += self.call.queries
        self.call = None
        for scoring in self.scorings:
            scoring.arm(False)
        self.inputs = [None] * len(self.stages)  # release the masks

    def _cutoff_hook(self, k: int):
        def hook(module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output  # (B, q, D)
            call = self.call
            if k == 0:
                call.cache = self.api.cache(kwargs)
                call.positions = kwargs.get("position_ids")  # true: later cutoffs get their stage's own
            if call.reselect:
                hidden = self._reselect(hidden)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            if call.past == 0:
                if self.reading:
                    raise _Read(self._keep(hidden))
                hidden = self._prefill(k, hidden)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            self._decode(k, hidden)
            return None

        return hook

    def _later_hook(self, k: int, layer_type: str):
        def hook(module, args, kwargs):
            inputs = self.inputs[k]
            own = inputs.built.get(layer_type)
            if own is None:
                # A decoder mask of None means no padding and nothing hidden from a one-token query: true of the
                # shorter merged cache as well, and with no position shift the decoder's rotary fits too.
                if inputs.reuse and kwargs.get("attention_mask") is None:
                    return None
                own = inputs.built[layer_type] = self._layer_kwargs(k, layer_type)
            kwargs.update(own)
            if "cache_position" in kwargs:  # releases before 5.5 pass each layer its queries' cache positions
                q = inputs.hidden.shape[1]
                kwargs["cache_position"] = torch.arange(inputs.query_start, inputs.query_start + q,
                                                        device=inputs.hidden.device)
            return args, kwargs

        return hook

    # -- prefill: merge, and say what the stage's layers see ---------------------------------------------------

    def _prefill(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        call, s = self.call, self.settings
        if k == 0:
            self._start_prefill(hidden)
        scores = self.scorings[k].importance(call.mask) if self.scorings else None
        merged = merge_sequence(hidden, call.mask, s.keep_start, s.keep_end, s.method, call.positions,
                                s.similarity, s.ratio, scores=scores, target=s.target, protect=s.protect)
        return self._enter(k, merged.hidden_states, merged.plan.mask, merged.positions)

    def _enter(self, k: int, hidden: torch.Tensor, real: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Stage k's prefill input: ``hidden`` (B, S_k, D), its real tokens (B, S_k) and their true positions."""
        call, s = self.call, self.settings
        seen, shift = positions, 0
        if s.positions == "reindex":
            seen = (real.long().cumsum(1) - 1).clamp(min=0)
            last = _last_real(real)[:, None]
            shift = positions.gather(1, last).round().long() - seen.gather(1, last)
        record = _Prefill(None if bool(real.all()) else real, hidden.shape[1], shift, positions)
        self.prefill.append(record)
        call.mask, call.positions = record.mask, positions
        entries = positions if self._slides(k, self.prompt_len) else None
        self.inputs[k] = _LayerInputs(hidden, seen, record.mask, 0, reuse=False, entries=entries)
        for layer_type in self.stages[k].mask_layer:  # now, while the stage's input is at hand
            self.inputs[k].built[layer_type] = self._layer_kwargs(k, layer_type)
        return hidden

    # -- a kept context: read up to the cutoff once, then each question chooses its tokens -------------------------

    def _keep(self, hidden: torch.Tensor) -> Kept:
        """At a read's cutoff: what questions need of the context (the later layers never run)."""
        self._start_prefill(hidden)
        call, size = self.call, hidden.shape[1]
        keys = {}
        for layer, probe in self.scorings[0].probes.items():
            if probe.window is not None:  # a sliding cache keeps only its window, and a question's tokens push
                keys[layer] = probe.attended(call.mask).keys  # the context's out of it
        mask = None if call.mask is None or bool(call.mask.all()) else call.mask.bool()
        return Kept(hidden, mask, call.positions, keys, held(call.cache))

    def _reselect(self, hidden: torch.Tensor) -> torch.Tensor:
        """At the cutoff of a question (B, Q, D) on a kept context: rank the context's tokens by the question's
        queries, plan them as the method does (the settings' ends apply to the context), and hand the later layers
        the chosen tokens and the whole question, as the prefill of both."""
        call, s, kept = self.call, self.settings, self.kept
        self.kept = None
        batch, q, _ = hidden.shape
        size = kept.hidden.shape[1]
        positions = call.positions  # (B, q) the question's true positions
        if positions is None:
            positions = torch.arange(size, size + q, device=hidden.device)[None]
        positions = positions.expand(batch, q)
        question = (call.pad_mask[:, size:].bool() if call.pad_mask is not None
                    else torch.ones(batch, q, dtype=torch.bool, device=hidden.device))
        context = kept.mask if kept.mask is not None else torch.ones(batch, size, dtype=torch.bool,
                                                                    device=hidden.device)
        keys = {layer: kept.keys[layer] if layer in kept.keys else call.cache.layers[layer].keys[:, :, :size]
                for layer in self.scorings[0].probes}
        window = min(s.score_window, int(question.sum(1).min()))  # the question's own last tokens score
        scores = self.scorings[0].importance(torch.cat([context, question], 1), keys, window)[:, :size]
        merged = merge_sequence(kept.hidden, context, s.keep_start, s.keep_end, s.method, kept.positions,
                                s.similarity, s.ratio, scores=scores, target=s.target, protect=s.protect)
        # from here on this call is the prefill of the chosen context and the question
        self.prefill, self.prefill_cache = [], weakref.ref(call.cache)
        self.prompt_len, self.since_prompt = size + q, 0
        self.right_padded = not bool(question[:, -1].all())
        call.past = 0
        return self._enter(0, torch.cat([merged.hidden_states, hidden], 1), torch.cat([merged.plan.mask, question], 1),
                           torch.cat([merged.positions, positions.to(merged.positions.dtype)], 1))

    def _start_prefill(self, hidden: torch.Tensor) -> None:
        call = self.call
        batch, q, _ = hidden.shape
        if call.pad_mask is not None and call.pad_mask.shape != (batch, q):
            raise ValueError(f"attention_mask {tuple(call.pad_mask.shape)} does not match the input {(batch, q)}")
        positions = call.positions if call.positions is not None else torch.arange(q, device=hidden.device)[None]
        call.positions = positions.expand(batch, q)
        call.mask = call.pad_mask
        self.prefill = []
        self.prefill_cache = weakref.ref(call.cache) if call.cache is not None else None
        self.prompt_len, self.since_prompt = q, 0
        self.right_padded = call.pad_mask is not None and not bool(call.pad_mask[:, -1].all())

    # -- decode: nothing merged; the new tokens attend to each stage's cache at their true positions -----------

    def _decode(self, k: int, hidden: torch.Tensor) -> None:
        call = self.call
        if call.cache is None or self.prefill_cache is None or self.prefill_cache() is not call.cache:
            raise RuntimeError(
                "this cache was not filled by a merged prefill of this patched model; "
                "start generation from an empty cache while patched"
            )
        if self.right_padded:
            raise ValueError("generation continues every row from its last position, which right padding fills "
                             "with a pad token: pad prompts on the left (tokenizer.padding_side = 'left')")
        record = self.prefill[k]
        batch, q, _ = hidden.shape
        positions = call.positions
        if positions is None:
            positions = torch.arange(call.past, call.past + q, device=hidden.device)[None]
        positions = positions.expand(batch, q)
        entries = None
        if self._slides(k, self.prompt_len + self.since_prompt + q):
            # the tokens since the prompt sit at consecutive positions before this call's
            since = positions[:, :1] - torch.arange(self.since_prompt, 0, -1, device=hidden.device)
            entries = torch.cat([record.positions, since.to(record.positions.dtype), positions.float()], 1)
        shifted = not isinstance(record.shift, int) or record.shift != 0
        if shifted:
            positions = positions - record.shift
        kv_mask = None
        if record.mask is not None or call.pad_mask is not None:  # built only if a layer needs a mask
            kv_mask = functools.partial(self._decode_kv_mask, k, record, batch, q, hidden.device)
        start = record.length + self.since_prompt
        reuse = record.mask is None and not shifted and entries is None
        self.inputs[k] = _LayerInputs(hidden, positions, kv_mask, start, reuse=reuse, entries=entries)

    def _slides(self, k: int, tokens: int) -> bool:
        """Whether stage k's sliding layers can meet a key further than their window from a query, in a call whose
        tokens reach ``tokens`` into the sequence (merged entries are then fewer than the window's tokens)."""
        window = getattr(self.config, "sliding_window", None)
        return bool(window) and tokens > window and "sliding_attention" in self.stages[k].mask_layer

    def _decode_kv_mask(self, k: int, record: _Prefill, batch: int, q: int, device: torch.device) -> torch.Tensor:
        """(B, S_k + new) 2D mask of the stage's cache: its merged prompt, then the tokens since."""
        call = self.call
        new = self.since_prompt + q  # tokens since the prompt, this step's included
        prefix = record.mask
        if prefix is None:
            prefix = torch.ones(batch, record.length, dtype=torch.bool, device=device)
        suffix = (call.pad_mask[:, self.prompt_len:].bool() if call.pad_mask is not None
                  else torch.ones(batch, new, dtype=torch.bool, device=device))
        return torch.cat([prefix, suffix], dim=1)

    # -- what a stage's layers are given ------------------------------------------------------------------------

    def _layer_kwargs(self, k: int, layer_type: str) -> dict:
        """Rotary embeddings and mask for a stage's layers of one type, from the model's own modules."""
        inputs = self.inputs[k]
        if callable(inputs.kv_mask):  # a decode step's, made on first need
            inputs.kv_mask = inputs.kv_mask()
        hidden, positions = inputs.hidden, inputs.positions
        layer = self.stages[k].mask_layer[layer_type]
        held = self.call.cache.get_seq_length(layer) if self.call.past else inputs.query_start
        if held != inputs.query_start:  # something (a KV-cache compression such as a kvpress press) changed it
            if inputs.kv_mask is not None:
                raise ValueError(
                    f"layer {layer}'s cache holds {held} entries where the merged prefill and the steps since left "
                    f"{inputs.query_start}: a KV-cache compression changed it, and which of the entries left are "
                    "padding is unknown. Continue such a cache on unpadded rows only")
            inputs.query_start = held  # an unpadded row sees every entry left, and its new tokens causally
            inputs.entries = None  # which entries it left is unknown: the model's own window, in entries
        mask = self.api.mask(layer_type, self.config, hidden, inputs.kv_mask, self.call.cache, layer,
                             inputs.query_start)
        if layer_type == "sliding_attention" and inputs.entries is not None:
            mask = self._narrow(mask, inputs.entries, layer, hidden.shape[1])
        rotary = self.decoder.rotary_emb
        if self.rotary_per_type:
            embeddings = rotary(hidden, positions, layer_type)
        else:
            shared = next((b["position_embeddings"] for b in inputs.built.values()), None)
            embeddings = shared if shared is not None else rotary(hidden, positions)
        return dict(attention_mask=mask, position_embeddings=embeddings, position_ids=positions)

    def _narrow(self, mask: torch.Tensor | None, entries: torch.Tensor, layer: int, q: int) -> torch.Tensor:
        """A sliding layer's mask (B, 1, q, kv) narrowed to the keys whose true position is within the window of the
        query's; ``entries`` (B, n), the stage's every entry, this call's last. The layer attends to the last kv
        entries: those its cache holds (a sliding cache keeps its last W - 1) and this call's."""
        if mask is None:  # SDPA's causal: every held entry, and this call's causally
            cache = self.call.cache
            held = cache.layers[layer] if cache is not None and len(cache.layers) > layer else None
            before = held.keys.shape[-2] if held is not None and held.is_initialized else 0
            kv = before + q
            mask = torch.ones(q, kv, dtype=torch.bool, device=entries.device).tril_(before)[None, None]
        keys = entries[:, -mask.shape[-1]:]  # (B, kv)
        near = within_window(entries[:, -q:], keys, self.config.sliding_window)[:, None]  # (B, 1, q, kv)
        if mask.dtype == torch.bool:
            return mask & near
        return mask.masked_fill(~near, torch.finfo(mask.dtype).min)  # eager's additive mask


def held(cache: DynamicCache) -> tuple[int, ...]:
    """The entries each layer's cache holds (0 for a layer not yet written)."""
    return tuple(layer.keys.shape[-2] if layer.is_initialized else 0 for layer in cache.layers)


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) bool -> (B,) index of each row's last real token (0 for an empty row)."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, idx, 0).amax(1)


