"""slerpmerge's shortening on a vLLM model: hooks on the engine's own layers, nothing of a forward copied.

    model pre-hook        note the step's positions (T,)
    cutoff attention      (scored methods) catch the cutoff layer's queries and keys as it attends with them
    cutoff layer's hook   each prompt's rows (P, D) -> (S', D) by the method (`scoring.py`); decode rows pass;
                          the later layers get the step's short slots in the forward context
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
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS

from ..architecture import layer_types
from ..rules import NO_BOS, lacks_bos, leading_bos, word_table
from .backend import shortened_backend
from .config import ARCHITECTURES, PREFIX, check_engine, settings_from_config
from .kvspec import short_spec
from .rotary import FractionalRotary, check_fractional, fractional_positions
from .scoring import PromptMerger
from .sliding import Prompts, check_impl, narrowed

log = logging.getLogger(__name__)


class Shortener:
    """The hooks on one vLLM model, and what one step carries from the cutoff to the decoder's end."""

    def __init__(self, model: torch.nn.Module, vllm_config):
        hf_config = vllm_config.model_config.hf_config
        self.settings = s = settings_from_config(hf_config)
        check_engine(vllm_config)
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
        self.prompts = Prompts(self.window) if self.window is not None else None  # for the decode steps' windows
        # Merged tokens sit at their span's mean position; kept ones (prune, drop, reindex) at whole positions,
        # which go to the engine's own rotary module whatever its scaling.
        self.fractional = fractional_positions(s)
        for layer, slides in zip(later, sliding):
            attn = layer.self_attn
            attn.attn.attn_backend = shortened_backend(attn.attn.attn_backend)
            if slides:
                check_impl(attn.attn.impl)
                attn.attn.impl.forward = narrowed(attn.attn.impl, lambda: self.step.get("windows"))
            if self.fractional:
                check_fractional(attn.rotary_emb, s.method)
                attn.rotary_emb = FractionalRotary(attn.rotary_emb)
        block_size = vllm_config.cache_config.block_size
        for layer in later:  # KV-cache groups of their own, allocated by the short length (kvspec.py)
            layer.self_attn.attn.get_kv_cache_spec = _short_blocks(layer.self_attn.attn.get_kv_cache_spec, s,
                                                                   block_size)
        self.later_names = [layer.self_attn.attn.layer_name for layer in later]
        tokenizer = str(vllm_config.model_config.tokenizer or "")
        words = word_table(tokenizer) if s.words else None
        if s.words and words is None:
            raise ValueError(f"words=True finds words with the model's tokenizer; none could be read at {tokenizer!r}")
        if s.words and getattr(vllm_config.model_config, "enable_prompt_embeds", False):
            raise ValueError("words=True reads the prompts' token ids: no --enable-prompt-embeds")
        self.merger = PromptMerger(s, layers, types, hf_config, words)
        self.step: dict = {}
        self.bos = leading_bos(tokenizer)  # warned about once, then None
        # On the model, not its decoder: vLLM's compile decorator calls the decoder's forward directly, past hooks.
        model.register_forward_pre_hook(self._before_model, with_kwargs=True)
        model.register_forward_hook(self._after_model)
        layers[cutoff].register_forward_hook(self._after_cutoff)
        if self.merger.method.scored:
            for at, attn in self.merger.attn.items():
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
        short, step["owner"], true = self.merger.shorten(layout, stream, positions, step.get("qk"), step["ids"])
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
        """Each row's window in the later sliding layers (``true`` (T',): the short rows' true positions)."""
        if self.prompts is not None:
            self.step["windows"] = self.prompts.windows(layout, true)

    def _check_bos(self, first: torch.Tensor) -> None:
        """``first`` (N,): the first token of each prompt in this step (a prompt arrives whole)."""
        if lacks_bos(first, self.bos):
            log.warning(NO_BOS.format(bos=self.bos))
            self.bos = None


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
