"""The attention backend of the layers after the cutoff: the platform's own, with a metadata builder that lays
out each step's shortened rows (shorter queries, shorter sequences, the short prompt's slots) before the forward
runs. vLLM groups layers by backend class, so the later layers get a builder of their own and the early layers
keep the engine's metadata untouched.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from vllm.v1.attention.backend import AttentionBackend, AttentionCGSupport, subclass_attention_backend

from .config import settings_from_config
from .kvspec import short_length
from .layout import Shrinks, plan_step


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

        @classmethod
        def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
            return AttentionCGSupport.NEVER  # token counts depend on the prompts

        def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
            cm = common_attn_metadata
            settings = self.slerpmerge_settings
            layout = plan_step(cm.query_start_loc_cpu[:cm.num_reqs + 1], cm.seq_lens[:cm.num_reqs],
                               cm.block_table_tensor, cm.slot_mapping[:cm.num_actual_tokens],
                               self.kv_cache_spec.block_size, self.slerpmerge_shrinks,
                               lambda n: short_length(n, settings))
            device = cm.query_start_loc.device
            query_lens = layout.short_start[1:] - layout.short_start[:-1]
            seq_lens = layout.seq_lens
            short = replace(
                cm,
                query_start_loc=layout.short_start.to(device, cm.query_start_loc.dtype),
                query_start_loc_cpu=layout.short_start.to(cm.query_start_loc_cpu.dtype),
                seq_lens=seq_lens.to(device, cm.seq_lens.dtype),
                seq_lens_cpu_upper_bound=(None if cm.seq_lens_cpu_upper_bound is None
                                          else seq_lens.to(cm.seq_lens_cpu_upper_bound.dtype)),
                num_actual_tokens=int(layout.short_start[-1]),
                max_query_len=int(query_lens.max()) if len(query_lens) else 0,
                max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
                slot_mapping=layout.slots.to(device, cm.slot_mapping.dtype),
                positions=None,
            )
            metadata = super().build(common_prefix_len, short, fast_build)
            metadata.slerpmerge_layout = layout
            return metadata

    return subclass_attention_backend("Slerpmerge", base, ShortenedBuilder)
