"""Compress once, ask many: a context prefilled once by a patched model, kept, and continued by several questions.

The merge happens in the context's own prefill, so what it keeps cannot depend on a question that comes later
(kvpress's protocol, a chat over one document). Each question then runs as a decode step of several tokens at its
true positions, against each layer's own cache: the full-length early layers, the short later ones. A question
works on a copy of the context's cache, so the kept context serves every question alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from .compat import cache_kwargs


@dataclass
class Context:
    """A prefilled context: its tokens, its cache and what the patched model's prefill left for the steps after it."""

    model: torch.nn.Module
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S), 1 for real tokens (left padding)
    cache: DynamicCache
    state: dict  # the merger's record of the prefill

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """``model.generate`` on the context and then this question (B, Q): the context is not computed again, and
        the output holds the context's tokens, the question's and the new ones, as ``generate`` returns them."""
        merger = getattr(self.model, "_slerpmerge", None)
        if merger is None or merger.settings is not self.state["settings"]:
            raise ValueError("the model is no longer patched as it was when the context was prefilled")
        if input_ids.shape[0] != self.input_ids.shape[0]:
            raise ValueError(f"the context has {self.input_ids.shape[0]} rows, the question {input_ids.shape[0]}")
        if self.cache.get_seq_length(0) != self.input_ids.shape[1]:  # layer 0 holds every token of a merged prefill
            raise ValueError("the context's cache was compressed after its prefill (a KV-cache press?): generate "
                             "counts the tokens a cache has seen by its length, so it cannot continue one shorter "
                             "than its context")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cache = copy.deepcopy(self.cache)
        merger.resume(self.state, cache)
        return self.model.generate(input_ids=torch.cat([self.input_ids, input_ids], 1),
                                   attention_mask=torch.cat([self.attention_mask, attention_mask.to(
                                       self.attention_mask.dtype)], 1),
                                   **cache_kwargs(self.model, cache), **kwargs)


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Context:
    """Prefill ``input_ids`` (B, S; padded on the left) once with the patched ``model``'s merge, for `Context.generate`
    to continue with any number of questions."""
    merger = getattr(model, "_slerpmerge", None)
    if merger is None:
        raise ValueError("prefill a context with a patched model: slerpmerge.patch(model, ...) first")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("a question continues every row from its last token: pad the context on the left")
    cache = DynamicCache(config=model.config)
    model(input_ids, attention_mask=attention_mask, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    return Context(model, input_ids, attention_mask, cache, merger.snapshot())
