"""The attention backend of the layers after the cutoff: the platform's own, with a metadata builder that lays
out each step's shortened rows (shorter queries, shorter sequences, the short prompt's slots) before the forward
runs. vLLM groups layers by backend class, so the later layers get a builder of their own and the early layers
keep the engine's metadata untouched.

The short step is a whole `CommonAttentionMetadata` (every length, its CPU copy, the slots; no cache of the long
step's values), so any builder can read any field of it. Its lengths, slots and cache indices sit in tensors that
live as long as the builder, as the engine's own do, so a CUDA graph of a decode step replays them. vLLM's profile,
warm-up and graph-capture runs are not prompts: they pass through at full length.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport, CommonAttentionMetadata,
                                       subclass_attention_backend)
from vllm.v1.attention.backends.utils import PAD_SLOT_ID

from ..merge import merged_length
from .config import settings_from_config
from .layout import Shrinks, StepLayout, plan_step

# fields a short step cannot carry over from the long one; the engine features that set them are refused at start
UNSUPPORTED = ("dcp_local_seq_lens", "logits_indices_padded", "encoder_seq_lens", "mm_req_doc_ranges",
               "rswa_prefix_lens", "replayssm_decode_base_cpu")


class Buffers:
    """The later layers' query starts, sequence lengths, slots and cache indices: one tensor each for the builder's
    life, on its device, as the engine keeps its own (a CUDA graph replays the addresses it captured)."""

    def __init__(self, max_reqs: int, max_tokens: int, device: torch.device):
        self.query_start = torch.zeros(max_reqs + 1, dtype=torch.int32, device=device)  # (R_max + 1,)
        self.seq_lens = torch.zeros(max_reqs, dtype=torch.int32, device=device)  # (R_max,)
        self.slots = torch.full((max_tokens,), PAD_SLOT_ID, dtype=torch.int64, device=device)  # (T_max,)
        self.positions = torch.zeros(max_tokens, dtype=torch.int64, device=device)  # (T_max,) each row's cache index

    def fill(self, query_start: torch.Tensor, seq_lens: torch.Tensor, slots: torch.Tensor,
             positions: torch.Tensor | None):
        """Copy one step's values in (``positions`` None: leave them); returns views of the step's length."""
        views = (self.query_start[:query_start.shape[0]], self.seq_lens[:seq_lens.shape[0]],
                 self.slots[:slots.shape[0]])
        for view, value in zip(views, (query_start, seq_lens, slots)):
            view.copy_(value, non_blocking=True)
        if positions is not None:
            self.positions[:positions.shape[0]].copy_(positions, non_blocking=True)
        return views


def is_dummy(cm: CommonAttentionMetadata) -> bool:
    """A profile, warm-up or graph-capture run: vLLM gives every token of those the pad slot (it writes no KV),
    where a real step's tokens all have slots. Its rows are no prompts (a warm-up's "prompt" can be n of n + 1
    tokens) and must not be recorded as requests."""
    return bool((cm.slot_mapping[:cm.num_actual_tokens] == PAD_SLOT_ID).all())


def short_metadata(cm: CommonAttentionMetadata, layout: StepLayout | None, buffers: Buffers) -> CommonAttentionMetadata:
    """The step as the later layers see it: ``cm`` with every length field the layout's (``layout`` None: the
    engine's own, for a dummy run), in ``buffers``, and each row's cache index in ``buffers.positions`` (the
    later positions of `positions="reindex"`). Tokens past the requests' (graph padding) stay pad slots."""
    present = [name for name in UNSUPPORTED if getattr(cm, name) is not None]
    if present:
        raise RuntimeError(f"slerpmerge cannot lay out a short step with {', '.join(present)} set")
    n, total = cm.num_reqs, cm.num_actual_tokens
    if layout is None:
        query_start_cpu = cm.query_start_loc_cpu[:n + 1]
        seq_lens_cpu = cm.seq_lens_cpu_upper_bound
        query_start, seq_lens, slots = buffers.fill(cm.query_start_loc[:n + 1], cm.seq_lens[:n],
                                                    cm.slot_mapping[:total], cm.positions)
        num_tokens, max_query, max_seq = total, cm.max_query_len, cm.max_seq_len  # (a capture's are bounds)
    else:
        pad = total - int(cm.query_start_loc_cpu[n])  # tokens after the last request's (CUDA graph padding)
        query_start_cpu = layout.short_start.to(cm.query_start_loc_cpu.dtype)  # (R + 1,)
        seq_lens_cpu = layout.seq_lens.to(torch.int32)  # (R,)
        num_tokens = int(layout.short_start[-1]) + pad
        short_slots = torch.cat([layout.slots, torch.full((pad,), PAD_SLOT_ID, dtype=torch.long)])  # (T' + pad,)
        cache_index = torch.cat([layout.cache_index, torch.zeros(pad, dtype=torch.long)])  # (T' + pad,)
        query_start, seq_lens, slots = buffers.fill(query_start_cpu, seq_lens_cpu, short_slots, cache_index)
        query_lens = query_start_cpu[1:] - query_start_cpu[:-1]
        max_query, max_seq = int(query_lens.max()) if n else 0, int(seq_lens_cpu.max()) if n else 0
    return replace(
        cm,
        query_start_loc=query_start,
        query_start_loc_cpu=query_start_cpu,
        seq_lens=seq_lens,
        seq_lens_cpu_upper_bound=seq_lens_cpu,
        num_actual_tokens=num_tokens,
        max_query_len=max_query,
        max_seq_len=max_seq,
        slot_mapping=slots,
        positions=None,  # a merged row's position is known only once the model has merged
        _num_computed_tokens_cache=None,  # the long step's, if a builder before this one asked for them
        _token_to_req_indices_cache=None,
    )


@functools.lru_cache
def shortened_backend(base: type[AttentionBackend]) -> type[AttentionBackend]:
    """``base`` whose metadata builder gives the later layers the shortened step (cached: one class per base)."""
    base_builder = base.get_builder_cls()

    class ShortenedBuilder(base_builder):  # type: ignore[misc, valid-type]
        supports_update_block_table = False  # the layout differs from the early layers': always build

        def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
            super().__init__(kv_cache_spec, layer_names, vllm_config, device)
            self.slerpmerge_settings = settings_from_config(vllm_config.model_config.hf_config)
            self.slerpmerge_shrinks = Shrinks()
            sched = vllm_config.scheduler_config
            self.slerpmerge_buffers = Buffers(sched.max_num_seqs, sched.max_num_batched_tokens, device)

        @classmethod
        def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
            """A prompt's rows after the cutoff depend on its length, a decode step's do not: graphs for steps of
            single-token decodes at most (vLLM's cudagraph_mode FULL_DECODE_ONLY), as far as the base allows."""
            base = super().get_cudagraph_support(vllm_config, kv_cache_spec)
            return min(base, AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE, key=lambda support: support.value)

        def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
            cm = common_attn_metadata
            layout = None
            if not is_dummy(cm):
                settings = self.slerpmerge_settings
                seq_lens = cm.seq_lens_cpu_upper_bound  # exact: no speculative decoding
                layout = plan_step(cm.query_start_loc_cpu[:cm.num_reqs + 1],
                                   (cm.seq_lens if seq_lens is None else seq_lens)[:cm.num_reqs],
                                   cm.block_table_tensor, cm.slot_mapping[:cm.num_actual_tokens],
                                   self.kv_cache_spec.block_size, self.slerpmerge_shrinks,
                                   lambda n: merged_length(n, settings))
            short = short_metadata(cm, layout, self.slerpmerge_buffers)
            # no prefix is common to the short step's requests (prefix caching is off): no cascade attention
            metadata = super().build(0, short, fast_build)
            metadata.slerpmerge_layout = layout
            metadata.slerpmerge_slots = short.slot_mapping  # (T' + pad,) where the later layers write K and V
            metadata.slerpmerge_positions = self.slerpmerge_buffers.positions[:short.num_actual_tokens]  # (T' + pad,)
            return metadata

    return subclass_attention_backend("Slerpmerge", base, ShortenedBuilder)
