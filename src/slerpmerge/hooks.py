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

Here the hooks and their wiring; `prefill` and `decode` say what a cutoff does in each, `layer_inputs` what the
later layers are given (and their pre-hooks), `state` the records they keep.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Callable

import torch

from . import decode, methods, prefill
from .architecture import layer_types
from .compat import Api, UnknownTransformers
from .layer_inputs import LayerInputs, later_hook
from .probe import Scoring
from .rules import NO_BOS, lacks_bos, leading_bos, word_starts, word_table
from .settings import MergeSettings
from .state import Forward, Kept, Prompt, Record, held, stages

__all__ = ["Kept", "Merger", "held"]


class _Read(Exception):
    """Raised at the cutoff of a read: the later layers have nothing to do."""

    def __init__(self, kept: Kept):
        self.kept = kept


class Merger:
    """The hooks of one patched model, and what the last prefill left for its decode steps."""

    def __init__(self, model, settings: MergeSettings):
        self.model, self.settings = model, settings
        self.decoder = model.model
        self.config = model.config
        self.api = Api.of(self.decoder)
        # Scored methods: probes on each cutoff layer (or the layers its rankings read) catch queries and keys.
        self.scorings = [Scoring(self.decoder.layers, self.config, settings, c)
                         for c in settings.cutoffs] if methods.get(settings.method).scored else []
        self.stages = stages(layer_types(self.config), settings.cutoffs, len(self.decoder.layers))
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
                hook = later_hook(self, k, kind)
                self.handles.append(self.decoder.layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        self.saved_use_cache = model.generation_config.use_cache
        if settings.cache == "recompute":
            model.generation_config.use_cache = False

        self.call: Forward | None = None  # the decoder call under way
        self.inputs: list[LayerInputs | None] = [None] * len(self.stages)  # per stage, for that call
        self.prompt = Prompt()  # the last prefill, kept for its decode steps
        path = str(getattr(model, "name_or_path", "") or "")
        self.bos = leading_bos(path)  # warned about once, then None
        self.words = word_table(path) if settings.words else None  # (V, 2): which tokens begin and end words
        if settings.words and self.words is None:
            raise ValueError(f"words=True finds words with the model's tokenizer, and none is saved at "
                             f"{path or 'the model'}'s name_or_path: save the tokenizer beside the weights")
        self.reading = False  # the next prefill stops at the cutoff (`read`)
        self.pending = None  # (Kept, weak reference to the cache its question runs on), until that forward
        self.kept: Kept | None = None  # the kept context the call under way continues

    @property
    def prefill(self) -> list[Record]:
        """What the last prefill left per stage (`merged_lengths` reads their lengths)."""
        return self.prompt.stages

    def snapshot(self) -> dict:
        """What the last prefill left for its decode steps, for `resume` to continue a copy of its cache."""
        return dict(settings=self.settings, prefill=list(self.prompt.stages), prompt_len=self.prompt.length,
                    right_padded=self.prompt.right_padded)

    def resume(self, state: dict, cache) -> None:
        """Continue ``cache``, a copy of the cache a prefill filled, from that prefill's `snapshot`."""
        self.prompt = Prompt(list(state["prefill"]), weakref.ref(cache), length=state["prompt_len"],
                             right_padded=state["right_padded"])

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
        ids = kwargs.get("input_ids")
        if ids is None and kwargs.get("inputs_embeds") is None and args:
            ids = args[0]
        tokens = ids if ids is not None else kwargs["inputs_embeds"]
        queries = tokens.shape[1]
        if mask is not None and cache is None and mask.shape[1] > queries:
            raise UnknownTransformers(
                f"a decode step arrived (an attention mask over {mask.shape[1]} tokens for {queries} new ones) "
                f"with no cache under {self.api.cache_arg!r}")
        if past == 0 and self.bos is not None and ids is not None:
            self._check_bos(ids, mask)
        self.call = Forward(mask, past, queries)
        if self.words is not None and past == 0:  # a prefill plans; a question reads its context's (`Kept`)
            if ids is None:
                raise ValueError("words=True reads the prompt's token ids: pass input_ids, not inputs_embeds")
            self.call.word_starts = word_starts(ids, self.words)  # (B, q)
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
            self.prompt.since += self.call.queries
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
                hidden = prefill.reselect(self, hidden)
            elif call.past == 0:
                if self.reading:
                    raise _Read(prefill.keep(self, hidden))
                hidden = prefill.merge(self, k, hidden)
            else:
                decode.step(self, k, hidden)
                return None
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook
