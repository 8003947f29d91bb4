"""KV memory for the layers after the cutoff: a KV-cache spec of their own, so vLLM puts them in KV-cache groups of
their own, and a manager that gives a request the slots those layers write: `merged_length(P)` for a prompt of P
tokens, then one per generated token (a sliding-window layer's below its window freed, as vLLM frees its own).

A prompt arrives whole (chunked prefill and prefix caching are off), so a request's first allocation sees its whole
prompt; after a preemption the request is allocated again as one prompt of its prompt and generated tokens, and the
builder shortens it as such (`layout.plan_step`). Either way the manager notes N - merged_length(N) at the first
allocation and maps every later token count through it. The layers before the cutoff keep vLLM's own specs.

Registered through vLLM's `KVCacheSpecRegistry` (`register`), the documented way to add a spec and its manager.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import SingleTypeKVCacheManager
from vllm.v1.kv_cache_interface import AttentionSpec, FullAttentionSpec, KVCacheSpec, SlidingWindowSpec, replace_as

from ..merge import merged_length
from ..settings import MergeSettings


@dataclass(frozen=True, kw_only=True)
class ShortSpec(AttentionSpec):
    """A layer after the cutoff. Not a `FullAttentionSpec`: vLLM would fold it into the full-attention group."""

    settings: str  # the engine's MergeSettings as JSON (a spec is hashed and sent between processes)
    sliding_window: int | None = None

    @property
    def prefix_cacheable(self) -> bool:
        return False  # its blocks hold short prompts, not the hashed tokens

    def max_memory_usage_bytes(self, vllm_config) -> int:
        # A short prompt with a long generation is not shortened: a request's worst case is its full length.
        return cdiv(vllm_config.model_config.max_model_len, self.block_size) * self.page_size_bytes


def short_spec(spec: KVCacheSpec, settings: MergeSettings, block_size: int) -> ShortSpec:
    """A later layer's spec from vLLM's own for it (full or sliding attention)."""
    if type(spec) not in (FullAttentionSpec, SlidingWindowSpec):
        raise ValueError(f"slerpmerge cannot shorten the KV cache of a layer with {type(spec).__name__}")
    window = spec.sliding_window if isinstance(spec, SlidingWindowSpec) else None
    drop = [f for f in ("sliding_window", "extra_retained_tokens", "attention_chunk_size", "non_causal")
            if hasattr(spec, f)]
    return replace_as(spec, ShortSpec, drop=drop, block_size=block_size, sliding_window=window,
                      settings=json.dumps(settings.kwargs(), sort_keys=True))


class ShortManager(SingleTypeKVCacheManager):
    """Blocks of one KV-cache group of later layers: vLLM's token counts (prompt + generated) mapped to the short
    ones (short prompt + generated). Prefix caching is off, so there are no cache hits."""

    def __init__(self, kv_cache_spec: ShortSpec, **kwargs) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self.settings = MergeSettings.make(**json.loads(kv_cache_spec.settings))
        self.window = kv_cache_spec.sliding_window
        self.shrink: dict[str, int] = {}  # request -> N - merged_length(N), N its tokens at its first allocation

    def short(self, request_id: str, num_tokens: int) -> int:
        """A request's slots in these layers when vLLM counts ``num_tokens``."""
        shrink = self.shrink.get(request_id)
        if shrink is None:  # not allocated yet: the whole sequence arrives as one prompt
            shrink = num_tokens - merged_length(num_tokens, self.settings)
        return num_tokens - shrink

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int,
                                   new_computed_blocks: Sequence, total_computed_tokens: int,
                                   num_local_computed_tokens: int, num_tokens_main_model: int,
                                   apply_admission_cap: bool = False, prefill_end: int = 0) -> int:
        computed = self.short(request_id, total_computed_tokens) if request_id in self.shrink else 0
        return super().get_num_blocks_to_allocate(
            request_id, self.short(request_id, num_tokens), new_computed_blocks, computed, 0,
            self.short(request_id, num_tokens_main_model), apply_admission_cap, prefill_end)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        if request_id not in self.shrink:
            self.shrink[request_id] = num_tokens - merged_length(num_tokens, self.settings)
        return super().allocate_new_blocks(request_id, self.short(request_id, num_tokens),
                                           self.short(request_id, num_tokens_main_model))

    def remove_skipped_blocks(self, request_id: str, processed_computed_tokens: int,
                              num_prompt_tokens: int | None = None) -> None:
        if self.window is None or request_id not in self.shrink:
            return
        # A query sees the entries within the window of its true position; entries' positions differ by at least
        # 1, so those are among its last `window` entries (sliding.py). The first block stays: it is the request's
        # key in the builder (`layout.Shrinks`) for as long as it lives.
        skipped = max(0, self.short(request_id, processed_computed_tokens) - self.window + 1)
        self._remove_blocks_in_range(request_id, 1, skipped // self.block_size)

    def pop_blocks_for_free(self, request_id: str) -> list:
        self.shrink.pop(request_id, None)
        return super().pop_blocks_for_free(request_id)

    @classmethod
    def find_longest_cache_hit(cls, block_hashes, max_length, kv_cache_group_ids, block_pool, kv_cache_spec,
                               drop_eagle_block, alignment_tokens, dcp_world_size=1, pcp_world_size=1):
        return tuple([] for _ in kv_cache_group_ids), 0


def register() -> None:
    """Add the spec and its manager to vLLM's registry, in every process (the plugin's entry point).

    The registry fills in vLLM's own specs only while it is empty, so they go in first, by the function the
    engine core itself calls for them (`test_vllm_kvspec` fails if that stops holding).
    """
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    register_all_kvcache_specs(None)
    KVCacheSpecRegistry.register(ShortSpec, ShortManager)
