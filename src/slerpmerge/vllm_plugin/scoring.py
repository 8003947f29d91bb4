"""Each prompt's rows of a step merged inside vLLM: scored by the settings' rankings from the queries and keys
the scoring layers attended with (over the chosen heads of every tensor-parallel rank), then planned and merged. The
math is slerpmerge's one implementation (`scorers`, `merge`); this module only slices the step's rows for it."""

from __future__ import annotations

import torch
from vllm.distributed import (get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                              tensor_model_parallel_all_reduce)

from .. import methods
from ..merge import merge_sequence
from ..rules import word_starts
from ..score import Attended, spread
from ..scorers import SCORERS, importance, mixed


class PromptMerger:
    """Merges each prompt's rows of a step as the settings say."""

    def __init__(self, settings, layers, types: list[str], hf_config, words: torch.Tensor | None = None):
        self.settings = settings
        self.words = words  # (V, 2) which tokens begin and end words (`rules.word_table`), for `words`
        self.method = methods.get(settings.method)
        self.terms = settings.terms(settings.cutoffs[0])  # the rankings, each at its layer
        self.attn = {t.layer: layers[t.layer].self_attn.attn for t in self.terms}  # the attention each reads
        self.windows = {t.layer: hf_config.sliding_window if types[t.layer] == "sliding_attention" else None
                        for t in self.terms}
        self.softcap = getattr(hf_config, "attn_logit_softcapping", None)
        self.tp_size, self.tp_rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()

    def shorten(self, layout, stream: torch.Tensor, positions: torch.Tensor, qk: dict | None,
                ids: torch.Tensor | None = None):
        """A step's rows ``stream`` (T, D) at ``positions`` (T,) with token ``ids`` (T,) -> its short rows (T', D),
        each row's short row (T,) and the short rows' true positions (T',) float: each prompt the ``layout``
        shortens merged, the rest as they are."""
        rows, seen, owner = [], [], []
        starts, shorts = layout.query_start.tolist(), layout.short_start.tolist()
        for i, prompt in enumerate(layout.prompt.tolist()):
            a, b = starts[i], starts[i + 1]
            kept = shorts[i + 1] - shorts[i]
            if not prompt or kept == b - a:
                rows.append(stream[a:b])
                seen.append(positions[a:b].to(torch.float32))
                owner.append(torch.arange(shorts[i], shorts[i + 1], device=stream.device))
                continue
            begins = None if self.words is None else word_starts(ids[a:b][None], self.words)  # (1, P)
            merged = self.merge(stream[a:b], positions[a:b], qk, a, b, begins)
            if merged.plan.length != kept:
                raise RuntimeError(f"slerpmerge: a prompt of {b - a} tokens merged to {merged.plan.length}, "
                                   f"the layout expected {kept}")
            rows.append(merged.hidden_states[0])
            seen.append(merged.positions[0])
            # each input token belongs to the first output row whose span ends at or after it
            index = torch.searchsorted(merged.plan.last[0].contiguous(), torch.arange(b - a, device=stream.device))
            owner.append(shorts[i] + index)
        return torch.cat(rows), torch.cat(owner), torch.cat(seen)  # (T', D), (T,), (T',) float

    def merge(self, rows: torch.Tensor, positions: torch.Tensor, qk: dict | None, a: int, b: int,
              starts: torch.Tensor | None = None):
        """``rows`` (P, D) and their ``positions`` (P,): the step's rows a..b; ``qk``: score layer -> the step's
        (T, H·d) queries and (T, H_kv·d) keys, for a scored method; ``starts`` (1, P): its tokens that begin a
        word, for `words`."""
        s = self.settings
        scores = self.scores(qk, a, b) if self.method.scored else None
        return merge_sequence(rows[None], None, s.keep_start, s.keep_end, s.method, positions[None], s.similarity,
                              s.ratio, scores=scores, target=s.target, protect=s.protect, chunk=s.chunk,
                              word_starts=starts)

    def scores(self, qk: dict, a: int, b: int) -> torch.Tensor:
        """(1, P) the prompt's tokens scored by the setting's rankings (interleaved when it has two), over the chosen
        heads of every tensor-parallel rank."""
        scores = [self._term_scores(t, qk, a, b) for t in self.terms]
        return scores[0] if len(scores) == 1 else mixed(scores, None)

    def _term_scores(self, term, qk: dict, a: int, b: int) -> torch.Tensor:
        s, attn = self.settings, self.attn[term.layer]
        q_all, k_all = qk[term.layer]
        n, d = b - a, attn.head_size
        mask = torch.ones(1, n, dtype=torch.bool, device=q_all.device)
        q = q_all[a:b].view(n, attn.num_heads, d).transpose(0, 1)[None]  # (1, H, P, d)
        k = k_all[a:b].view(n, attn.num_kv_heads, d).transpose(0, 1)[None]  # (1, H_kv, P, d)
        attended = Attended(q, k, mask, attn.impl.scale, self.windows[term.layer], self.softcap, attn.num_heads)
        radius = s.options["spread"]
        if self.tp_size == 1:
            return importance(attended, term.score, s.score_window, term.heads, radius)
        # this rank's query heads are a slice of the model's: sum the chosen ones across ranks
        per_head = SCORERS[term.score](attended, s.score_window)  # (1, H_local, P)
        local = range(self.tp_rank * attn.num_heads, (self.tp_rank + 1) * attn.num_heads)
        chosen = term.heads if term.heads is not None else range(attn.num_heads * self.tp_size)
        mine = [h - local.start for h in chosen if h in local]
        score = tensor_model_parallel_all_reduce(per_head[:, mine].sum(1)) / len(chosen)
        return spread(score, radius)
