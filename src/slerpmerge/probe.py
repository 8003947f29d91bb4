"""The transformers adapter's probes: catch a decoder layer's queries and keys as it computes them, apply the
layer's own norms, rotary embeddings and scaling, and hand them to the scorers as an `Attended`.

The scorers (`scorers.py`) and the math under them (`score.py`) know nothing of this; the vLLM plugin catches the
same queries and keys on its own layers and calls the same scorers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from .architecture import layer_types
from .score import Attended
from .scorers import KEYS_ONLY, importance, last, mixed


class AttentionProbe:
    """Catches a decoder layer's query and key projections while armed, and scores tokens from them.

    Drives the layer's own modules: ``q_proj`` and ``k_proj`` (or a fused ``qkv_proj``), the optional per-head
    ``q_norm`` and ``k_norm``, its ``scaling``, and the rotary function of the layer's modeling module. With
    ``queries=False`` (a keys-only scorer, such as key norms) it neither holds nor rotates the queries: a probe at an
    early layer would otherwise keep every query alive until the cutoff.
    """

    def __init__(self, layer, config, sliding_window: int | None, queries: bool = True):
        attn = layer.self_attn
        self.attn, self.window, self.queries = attn, sliding_window, queries
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(attn, "head_dim", None) or config.hidden_size // self.heads
        self.rotary = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
        if self.rotary is None or not hasattr(attn, "scaling"):
            raise ValueError(f"{type(attn).__name__} has no apply_rotary_pos_emb or scaling: cannot score tokens")
        self.softcap = getattr(attn, "attn_logit_softcapping", None)
        self.armed = False
        self.caught: dict = {}
        fused = getattr(attn, "qkv_proj", None)
        if fused is not None:
            self.handles = [fused.register_forward_hook(self._catch("qkv"))]
        elif hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
            self.handles = [attn.k_proj.register_forward_hook(self._catch("k"))]
            if queries:
                self.handles.append(attn.q_proj.register_forward_hook(self._catch("q")))
        else:
            raise ValueError(f"{type(attn).__name__} has neither q_proj/k_proj nor qkv_proj: cannot score tokens")
        self.handles.append(attn.register_forward_pre_hook(self._catch_rotary, with_kwargs=True))

    def _catch(self, name: str):
        def hook(module, args, output):
            if self.armed:
                self.caught[name] = output

        return hook

    def _catch_rotary(self, module, args, kwargs):
        if self.armed:
            self.caught["rotary"] = kwargs.get("position_embeddings")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def scores(self, mask: torch.Tensor | None, count: int, heads: Sequence[int] | None = None,
               per_head: bool = False) -> torch.Tensor:
        """(B, S) attention the last ``count`` real tokens paid each token in the forward just caught ((B, H, S)
        for each head apart with ``per_head``)."""
        each = last(self.attended(mask), count)
        if heads is not None:
            each = each[:, list(heads)]
        return each if per_head else each.mean(1)

    def attended(self, mask: torch.Tensor | None, past: torch.Tensor | None = None) -> Attended:
        """The queries and keys of the forward just caught, as the layer attends with them. ``past`` (B, H_kv, P, d):
        the keys of P tokens before them (a kept context), whose queries are gone: they read as zeros, and
        ``mask`` (B, P + S) covers both."""
        caught, self.caught = self.caught, {}
        if "qkv" in caught:
            split = self.heads * self.head_dim
            q_all, k_all = caught["qkv"][..., :split], caught["qkv"][..., split:split + self.kv_heads * self.head_dim]
        else:
            q_all, k_all = caught.get("q"), caught["k"]
        batch, seq, _ = k_all.shape
        before = 0 if past is None else past.shape[2]
        if mask is None:
            mask = torch.ones(batch, before + seq, dtype=torch.bool, device=k_all.device)
        k = k_all.view(batch, seq, self.kv_heads, self.head_dim)
        if getattr(self.attn, "k_norm", None) is not None:
            k = self.attn.k_norm(k)
        cos, sin = caught["rotary"]
        if not self.queries:
            k = k.transpose(1, 2)
            _, k = self.rotary(k, k, cos, sin)  # (B, H_kv, S, d); the first is the keys again, in the queries' place
            return Attended(None, _after(past, k), mask.bool(), self.attn.scaling, self.window, self.softcap,
                            self.heads)
        q = q_all.view(batch, seq, self.heads, self.head_dim)
        if getattr(self.attn, "q_norm", None) is not None:
            q = self.attn.q_norm(q)
        q, k = self.rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # (B, H, S, d), (B, H_kv, S, d)
        if past is not None:
            q = torch.cat([q.new_zeros(batch, self.heads, before, self.head_dim), q], 2)
        return Attended(q, _after(past, k), mask.bool(), self.attn.scaling, self.window, self.softcap, self.heads)


def _after(past: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
    return keys if past is None else torch.cat([past.to(keys.dtype), keys], 2)


class Scoring:
    """The probes a scored setting reads for one cutoff (a layer per ranking) and the score it keeps tokens by."""

    def __init__(self, layers, config, settings, cutoff: int):
        self.settings, self.terms = settings, settings.terms(cutoff)
        types = layer_types(config)
        queries = {t.layer: False for t in self.terms}
        for t in self.terms:
            queries[t.layer] |= t.score not in KEYS_ONLY
        self.probes = {layer: AttentionProbe(layers[layer], config, config.sliding_window
                                             if types[layer] == "sliding_attention" else None, wants)
                       for layer, wants in queries.items()}

    def arm(self, armed: bool) -> None:
        for probe in self.probes.values():
            probe.armed = armed

    def remove(self) -> None:
        for probe in self.probes.values():
            probe.remove()

    def clear(self) -> None:
        for probe in self.probes.values():
            probe.caught = {}

    def importance(self, mask: torch.Tensor | None, past: dict | None = None,
                   window: int | None = None) -> torch.Tensor:
        """(B, S) from the forward just caught: each ranking's score, interleaved when there are two. ``past``:
        layer -> the keys (B, H_kv, P, d) of tokens before the forward's (`AttentionProbe.attended`), ``mask``
        (B, P + S) then covers both and so do the scores; ``window``: score by that many last queries instead of
        the settings' window."""
        attended = {layer: probe.attended(mask, None if past is None else past[layer])
                    for layer, probe in self.probes.items()}
        s = self.settings
        spread_ = s.options["spread"]
        scores = [importance(attended[t.layer], t.score, window or s.score_window, t.heads, spread_)
                  for t in self.terms]
        return scores[0] if len(scores) == 1 else mixed(scores, attended[self.terms[0].layer].mask)
