"""slerpmerge's shortening on a vLLM model: hooks on the engine's own layers, nothing of a forward copied.

    model pre-hook        note the step's positions (T,)
    cutoff attention      (scored methods) catch the cutoff layer's queries and keys as it attends with them
    cutoff layer's hook   each prompt's rows (P, D) -> (S', D) by the method; decode rows pass; the later layers
                          get the step's short slots in the forward context
    later layers          pre-hooks swap in the short rows' positions; their rotary modules take fractional ones;
                          their attention backend lays the short step out (`backend.py`); sliding-window ones
                          slide over true positions (`sliding.py`)
    model hook            (T', D) -> (T, D): each token's row is the short row that holds it, so the engine's
                          logits indices (each request's last token) find the real last token

The math (scores, plans, merges) is slerpmerge's one implementation; this module only moves rows.
"""

from __future__ import annotations

import importlib
import logging

import torch
from vllm.distributed import (get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                              tensor_model_parallel_all_reduce)
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS

from .. import methods
from ..architecture import layer_types
from ..rules import NO_BOS, lacks_bos, leading_bos
from ..merge import merge_sequence
from ..score import Attended, spread
from ..scorers import SCORERS, importance, mixed
from .backend import shortened_backend
from .config import ARCHITECTURES, PREFIX, check_engine, settings_from_config
from .kvspec import short_spec
from .rotary import FractionalRotary, check_fractional, fractional_positions
from .sliding import attend, check_impl, plan

log = logging.getLogger(__name__)


class Shortener:
    """The hooks on one vLLM model, and what one step carries from the cutoff to the decoder's end."""

    def __init__(self, model: torch.nn.Module, vllm_config):
        hf_config = vllm_config.model_config.hf_config
        self.settings = s = settings_from_config(hf_config)
        check_engine(vllm_config)
        self.method = methods.get(s.method)
        decoder = model.model
        layers = decoder.layers
        cutoff = s.cutoffs[0]
        later = list(layers)[cutoff + 1:]
        types = layer_types(hf_config)
        sliding = [types[i] == "sliding_attention" for i in range(cutoff + 1, len(layers))]
        self.window = hf_config.sliding_window if any(sliding) else None
        graphs = getattr(vllm_config.compilation_config.cudagraph_mode, "name", "NONE")
        if self.window is not None and graphs != "NONE":
            raise ValueError("slerpmerge narrows the sliding-window layers after the cutoff step by step, which a "
                             "CUDA graph cannot replay: --enforce-eager, or a layer_cutoff after the last sliding "
                             "layer")
        self.prompts: dict[int, tuple[torch.Tensor, int]] = {}  # first KV block -> its prompt's entries' true
        # positions (S',) and length P, for the decode steps of a request with sliding layers after the cutoff
        # Merged tokens sit at their span's mean position; kept ones (prune, drop, reindex) at whole positions,
        # which go to the engine's own rotary module whatever its scaling.
        self.fractional = fractional_positions(s)
        for layer, slides in zip(later, sliding):
            attn = layer.self_attn
            attn.attn.attn_backend = shortened_backend(attn.attn.attn_backend)
            if slides:
                check_impl(attn.attn.impl)
                attn.attn.impl.forward = self._sliding_forward(attn.attn.impl)
            if self.fractional:
                check_fractional(attn.rotary_emb, s.method)
                attn.rotary_emb = FractionalRotary(attn.rotary_emb)
        block_size = vllm_config.cache_config.block_size
        for layer in later:  # KV-cache groups of their own, allocated by the short length (kvspec.py)
            layer.self_attn.attn.get_kv_cache_spec = _short_blocks(layer.self_attn.attn.get_kv_cache_spec, s,
                                                                   block_size)
        self.later_names = [layer.self_attn.attn.layer_name for layer in later]
        self.terms = s.terms(cutoff)  # the rankings, each at its layer
        self.scored_attn = {t.layer: layers[t.layer].self_attn.attn for t in self.terms}
        self.windows = {t.layer: hf_config.sliding_window if types[t.layer] == "sliding_attention" else None
                        for t in self.terms}
        self.softcap = getattr(hf_config, "attn_logit_softcapping", None)
        self.tp_size, self.tp_rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
        self.step: dict = {}
        self.bos = leading_bos(str(vllm_config.model_config.tokenizer or ""))  # warned about once, then None
        # On the model, not its decoder: vLLM's compile decorator calls the decoder's forward directly, past hooks.
        model.register_forward_pre_hook(self._before_model, with_kwargs=True)
        model.register_forward_hook(self._after_model)
        layers[cutoff].register_forward_hook(self._after_cutoff)
        if self.method.scored:
            for at, attn in self.scored_attn.items():
                attn.register_forward_pre_hook(self._catch_qk(at))
        for layer in later:
            layer.register_forward_pre_hook(self._later_inputs, with_kwargs=True)

    # -- hooks ----------------------------------------------------------------------------------------------------

    def _before_model(self, module, args, kwargs):
        positions = kwargs["positions"] if "positions" in kwargs else args[1]
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0] if args else None
        self.step = {"positions": positions, "ids": ids}  # (T,) each

    def _catch_qk(self, layer: int):
        def hook(module, args):
            # (T, H·d), (T, H_kv·d): as the scoring layer attends with them
            self.step.setdefault("qk", {})[layer] = (args[0], args[1])

        return hook

    def _after_cutoff(self, module, args, output):
        context = get_forward_context()
        if not isinstance(context.attn_metadata, dict):
            return None  # the profile run: no metadata
        step = self.step
        # The later layers write their K/V at the short rows' slots and (reindex) sit at their cache indices, both
        # in their builder's buffers: a CUDA graph captured here replays those in each decode step.
        for name in self.later_names:
            context.slot_mapping[name] = context.attn_metadata[name].slerpmerge_slots
        later = context.attn_metadata[self.later_names[0]]
        if self.settings.positions == "reindex":
            step["later_positions"] = later.slerpmerge_positions
        layout = later.slerpmerge_layout
        if layout is None:
            return None  # a warm-up or capture run: no prompt to shorten
        positions = step["positions"]
        if self.bos is not None and step["ids"] is not None and bool(layout.prompt.any()):  # CPU: no sync on decode
            first = layout.query_start[:-1][layout.prompt].to(positions.device)  # (N,) each prompt's first row
            self._check_bos(step["ids"][first])
        if not layout.shortened:
            step.setdefault("later_positions", positions)
            self._windows(layout, positions.to(torch.float32))
            return None
        hidden, residual = output
        stream = hidden if residual is None else hidden + residual  # (T, D) the residual stream
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
            merged = self._merge(stream[a:b], positions[a:b], a, b)
            if merged.plan.length != kept:
                raise RuntimeError(f"slerpmerge: a prompt of {b - a} tokens merged to {merged.plan.length}, "
                                   f"the layout expected {kept}")
            rows.append(merged.hidden_states[0])
            seen.append(merged.positions[0])
            # each input token belongs to the first output row whose span ends at or after it
            index = torch.searchsorted(merged.plan.last[0].contiguous(), torch.arange(b - a, device=stream.device))
            owner.append(shorts[i] + index)
        short = torch.cat(rows)  # (T', D)
        step["owner"] = torch.cat(owner)  # (T,)
        true = torch.cat(seen)  # (T',) float
        step.setdefault("later_positions", true if self.fractional else true.long())
        self._windows(layout, true)
        return short, torch.zeros_like(short)

    def _later_inputs(self, module, args, kwargs):
        positions = self.step.get("later_positions")
        if positions is None:
            return None
        if "positions" in kwargs:
            kwargs["positions"] = positions
            return args, kwargs
        return (positions, *args[1:]), kwargs

    def _after_model(self, module, args, output):
        owner = self.step.get("owner")
        self.step = {}
        if owner is None:
            return None
        if isinstance(output, tuple):
            raise RuntimeError("slerpmerge: this model returned auxiliary hidden states (speculative decoding)")
        return output.index_select(0, owner)  # (T', D) -> (T, D)

    def _windows(self, layout, true: torch.Tensor) -> None:
        """Note each prompt's entries, and each row's window in the later sliding layers (``true`` (T',): the short
        rows' true positions)."""
        if self.window is None:
            return
        whole, blocks = layout.prompt.tolist(), layout.first_block.tolist()
        starts, shorts = layout.query_start.tolist(), layout.short_start.tolist()
        for i in range(len(whole)):
            if whole[i]:
                self.prompts[blocks[i]] = (true[shorts[i]:shorts[i + 1]].clone(), starts[i + 1] - starts[i])
        prompts = [None if whole[i] else self.prompts[blocks[i]] for i in range(len(whole))]
        self.step["windows"] = plan(whole, starts, shorts, true, prompts, self.window)

    def _sliding_forward(self, impl):
        """``impl.forward`` with each row's window in true positions, where any row's is narrower than the model's."""
        stock = impl.forward

        def forward(layer, query, key, value, kv_cache, attn_metadata, output=None, **kwargs):
            windows = self.step.get("windows")
            if windows is None or attn_metadata is None:
                return stock(layer, query, key, value, kv_cache, attn_metadata, output=output, **kwargs)
            return attend(impl, layer, query, key, value, kv_cache, attn_metadata, output, windows)

        return forward

    # -- one prompt -----------------------------------------------------------------------------------------------

    def _check_bos(self, first: torch.Tensor) -> None:
        """``first`` (N,): the first token of each prompt in this step (a prompt arrives whole)."""
        if lacks_bos(first, self.bos):
            log.warning(NO_BOS.format(bos=self.bos))
            self.bos = None

    def _merge(self, rows: torch.Tensor, positions: torch.Tensor, a: int, b: int):
        s = self.settings
        scores = self._scores(a, b) if self.method.scored else None
        return merge_sequence(rows[None], None, s.keep_start, s.keep_end, s.method, positions[None], s.similarity,
                              s.ratio, scores=scores, target=s.target, protect=s.protect)

    def _scores(self, a: int, b: int) -> torch.Tensor:
        """(1, P) the prompt's tokens scored by the setting's rankings (interleaved when it has two), over the chosen
        heads of every tensor-parallel rank."""
        scores = [self._term_scores(t, a, b) for t in self.terms]
        return scores[0] if len(scores) == 1 else mixed(scores, None)

    def _term_scores(self, term, a: int, b: int) -> torch.Tensor:
        s, attn = self.settings, self.scored_attn[term.layer]
        q_all, k_all = self.step["qk"][term.layer]
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


def _short_blocks(get_spec, settings, block_size: int):
    """A later layer's KV-cache spec: vLLM's own for it, as a `kvspec.ShortSpec`."""

    def spec(vllm_config):
        return short_spec(get_spec(vllm_config), settings, block_size)

    return spec


def _shortening(base: type) -> type:
    """``base`` (a vLLM model class) that shortens each prompt after the cutoff its config's settings name."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        object.__setattr__(self, "slerpmerge", Shortener(self, vllm_config))

    name = PREFIX + base.__name__
    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})


def model_class(architecture: str) -> type:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"slerpmerge cannot drive {architecture} in vLLM; supported: {', '.join(ARCHITECTURES)}")
    module, cls = _TEXT_GENERATION_MODELS[architecture]
    return _shortening(getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), cls))


def __getattr__(name: str):
    """`Slerpmerge<Architecture>` classes, made on first use (vLLM's registry loads them by name)."""
    if name.startswith(PREFIX) and name[len(PREFIX):] in ARCHITECTURES:
        cls = model_class(name[len(PREFIX):])
        globals()[name] = cls
        return cls
    raise AttributeError(name)
