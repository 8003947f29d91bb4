"""Read once, ask many: a context prefilled once by a patched model, kept, and continued by several questions.

Two ways to keep it. By default the merge happens in the context's own prefill, so what it keeps cannot depend on a
question that comes later (kvpress's protocol, a chat over one document); each question then runs as a decode step of
several tokens at its true positions, against each layer's own cache: the full-length early layers, the short later
ones. With ``reselect=True`` the prefill stops at the cutoff and keeps the early layers' cache and the cutoff's
output for every token; each question runs the early layers on its own tokens, ranks the context's tokens with its
own queries at the cutoff (the question-led ranking), and runs the later layers on the tokens it chose and itself, as
if context and question had been one prompt whose question the settings keep whole. Either way a question works on a
copy of the context's cache, so the kept context serves every question alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from . import methods
from .compat import cache_kwargs
from .hooks import held


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
        config = kwargs.get("generation_config") or self.model.generation_config
        if any(kwargs.get(name, getattr(config, name, 1)) not in (None, 1)
               for name in ("num_beams", "num_return_sequences")):
            raise ValueError("a question continues each of the context's rows once: no num_beams or "
                             "num_return_sequences (they repeat rows the context's cache holds once)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[1] == 0 or not bool(attention_mask.bool().any(1).all()):
            raise ValueError("a question needs at least one real token in every row")
        kept = self.state.get("kept")
        if kept is None and self.cache.get_seq_length(0) != self.input_ids.shape[1]:
            # layer 0 holds every token of a merged prefill
            raise ValueError("the context's cache was compressed after its prefill (a KV-cache press?): generate "
                             "counts the tokens a cache has seen by its length, so it cannot continue one shorter "
                             "than its context")
        if kept is not None and held(self.cache) != kept.held:
            raise ValueError("the context's cache was changed after its prefill (a KV-cache press?): a question "
                             "re-reads the early layers' cache of every context token and the later layers' of none")
        cache = copy.deepcopy(self.cache)
        if kept is None:
            merger.resume(self.state, cache)
        else:
            merger.reselect(kept, cache)
        return self.model.generate(input_ids=torch.cat([self.input_ids, input_ids], 1),
                                   attention_mask=torch.cat([self.attention_mask, attention_mask.to(
                                       self.attention_mask.dtype)], 1),
                                   **cache_kwargs(self.model, cache), **kwargs)

    def nbytes(self) -> int:
        """Bytes the kept context holds: its cache, and for reselection the cutoff's output and any keys kept."""
        total = sum(t.numel() * t.element_size() for layer in self.cache.layers if layer.is_initialized
                    for t in (layer.keys, layer.values))
        kept = self.state.get("kept")
        if kept is not None:
            total += kept.hidden.numel() * kept.hidden.element_size()
            total += sum(k.numel() * k.element_size() for k in kept.keys.values())
        return total


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            reselect: bool = False) -> Context:
    """Prefill ``input_ids`` (B, S; padded on the left) once with the patched ``model``, for `Context.generate` to
    continue with any number of questions.

    ``reselect=False``: the merge happens now, ranked by the context alone (the settings' own score and `mix`).
    ``reselect=True``: the prefill stops at the cutoff; each question then ranks the context's tokens by its own
    queries at the cutoff (its last ``window`` tokens, the settings' heads and `mix`), and the method keeps, merges
    or drops them (``keep_start`` and ``keep_end`` apply to the context, the question is always kept whole). It
    keeps more (the early layers' cache and one hidden state per token) and costs each question the later layers'
    pass over the tokens it keeps; it needs a scored method with one cutoff."""
    merger = getattr(model, "_slerpmerge", None)
    if merger is None:
        raise ValueError("prefill a context with a patched model: slerpmerge.patch(model, ...) first")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("a question continues every row from its last token: pad the context on the left")
    if reselect:
        _check_reselect(merger.settings)
    cache = DynamicCache(config=model.config)

    # the positions generate gives a left-padded prompt, and so its questions: each row counts its real tokens
    positions = (attention_mask.long().cumsum(1) - 1).masked_fill(attention_mask == 0, 1)

    def forward():
        model(input_ids, attention_mask=attention_mask, position_ids=positions, **cache_kwargs(model, cache),
              use_cache=True, logits_to_keep=1)

    if reselect:
        return Context(model, input_ids, attention_mask, cache, dict(settings=merger.settings,
                                                                      kept=merger.read(forward)))
    forward()
    return Context(model, input_ids, attention_mask, cache, merger.snapshot())


def _check_reselect(s) -> None:
    """What a question needs to choose its tokens: a scored method, one cutoff, and no ranking by the context's
    own queries (those are not kept)."""
    if not methods.get(s.method).scored:
        raise ValueError(f"reselect ranks the context's tokens by the question's attention: it needs a scored method "
                         f"({', '.join(m for m, v in methods.METHODS.items() if v.scored)}), not {s.method!r}")
    if len(s.cutoffs) > 1:
        raise ValueError(f"reselect chooses tokens at one cutoff, not at {len(s.cutoffs)}")
    if s.cache != "merged":
        raise ValueError('reselect keeps a cache: it needs cache="merged"')
    if any(t.score == "heavy" for t in s.terms(s.cutoffs[0])):
        raise ValueError("reselect keeps the context's keys, not its queries: the 'heavy' ranking, which reads every "
                         "query, cannot rank a kept context")
