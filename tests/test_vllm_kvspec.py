"""The later layers' KV-cache spec and its manager, on a block pool of vLLM's own, with no engine: blocks by the short
length, one more per block of generated tokens, freed with the request, the short length of the whole sequence after
a preemption, a sliding layer's blocks below its window freed. The engine runs are in test_vllm_plugin.py."""

from __future__ import annotations

import inspect

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402
from vllm.v1.core.block_pool import BlockPool  # noqa: E402
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager, SlidingWindowManager  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec  # noqa: E402

from slerpmerge.merge import merged_length  # noqa: E402
from slerpmerge.settings import MergeSettings  # noqa: E402
from slerpmerge.vllm_plugin.kvspec import ShortManager, ShortSpec, register, short_spec  # noqa: E402

BLOCK = 4
SETTINGS = MergeSettings.make(layer_cutoff=1, method="prune", keep_start=2, keep_end=2, target=0.25)
LAYER = dict(block_size=BLOCK, num_kv_heads=1, head_size=32, dtype=torch.float32)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def manager(window: int | None = None, blocks: int = 64) -> tuple[ShortManager, BlockPool]:
    spec = SlidingWindowSpec(**LAYER, sliding_window=window) if window else FullAttentionSpec(**LAYER)
    pool = BlockPool(blocks, enable_caching=False, hash_block_size=BLOCK)
    return ShortManager(short_spec(spec, SETTINGS, BLOCK), block_pool=pool, enable_caching=False,
                        kv_cache_group_id=1, scheduler_block_size=BLOCK), pool


def allocate(m: ShortManager, request: str, num_tokens: int) -> None:
    """As vLLM's KV-cache manager does for one step: free what the window skips, count, allocate."""
    m.remove_skipped_blocks(request, max(0, num_tokens - 1))
    need = m.get_num_blocks_to_allocate(request, num_tokens, [], 0, 0, num_tokens)
    got = m.allocate_new_blocks(request, num_tokens, num_tokens)
    assert len(got) == need


def held(m: ShortManager, request: str) -> list[int]:
    """Indices (in the request's block table) of the blocks it holds."""
    return [i for i, b in enumerate(m.req_to_blocks[request]) if not b.is_null]


def test_a_prompt_gets_its_short_length_then_one_slot_per_generated_token_and_gives_them_back():
    m, pool = manager()
    free = pool.get_num_free_blocks()
    short = merged_length(40, SETTINGS)
    assert short == 10  # a quarter of the 40 tokens (the target)
    assert m.get_num_blocks_to_allocate("a", 40, [], 0, 0, 40) == cdiv(short, BLOCK)
    allocate(m, "a", 40)
    assert len(m.req_to_blocks["a"]) == cdiv(short, BLOCK)
    for generated in range(1, 10):
        allocate(m, "a", 40 + generated)
        assert len(m.req_to_blocks["a"]) == cdiv(short + generated, BLOCK)
    allocate(m, "b", 3)  # shorter than the kept ends: unshortened
    assert len(m.req_to_blocks["b"]) == 1
    m.free("a")
    m.free("b")
    assert pool.get_num_free_blocks() == free


def test_a_preempted_request_comes_back_as_one_prompt_of_its_prompt_and_generated_tokens():
    m, pool = manager()
    allocate(m, "a", 40)
    for generated in range(1, 8):
        allocate(m, "a", 40 + generated)
    m.free("a")  # preempted
    allocate(m, "a", 47)  # recomputed: 40 prompt tokens and 7 generated, one prompt
    assert len(m.req_to_blocks["a"]) == cdiv(merged_length(47, SETTINGS), BLOCK)
    allocate(m, "a", 48)
    assert len(m.req_to_blocks["a"]) == cdiv(merged_length(47, SETTINGS) + 1, BLOCK)


def test_a_sliding_layer_frees_the_blocks_below_its_window_but_the_first():
    window = 6
    m, pool = manager(window)
    prompt = 200
    short = merged_length(prompt, SETTINGS)
    allocate(m, "a", prompt)
    assert held(m, "a") == list(range(cdiv(short, BLOCK)))  # the prompt step writes them all
    for generated in range(1, 30):
        allocate(m, "a", prompt + generated)
        entries = short + generated  # the new token's included; it sees the last `window` of them
        needed = set(range((entries - window) // BLOCK, cdiv(entries, BLOCK)))
        assert set(held(m, "a")) == needed | {0}
    m.free("a")
    assert pool.get_num_free_blocks() == 63


def test_the_spec_keeps_the_layer_shape_and_leaves_the_full_attention_group():
    full = FullAttentionSpec(**LAYER)
    spec = short_spec(full, SETTINGS, BLOCK)
    assert isinstance(spec, ShortSpec) and not isinstance(spec, FullAttentionSpec)
    assert spec.page_size_bytes == full.page_size_bytes and spec.sliding_window is None
    assert spec != short_spec(SlidingWindowSpec(**LAYER, sliding_window=8), SETTINGS, BLOCK)  # groups apart
    assert not spec.prefix_cacheable
    with pytest.raises(ValueError, match="ShortSpec"):
        short_spec(spec, SETTINGS, BLOCK)


def test_registering_keeps_vllms_own_specs_and_the_engine_still_registers_them(monkeypatch):
    """The registry fills in vLLM's specs only while it is empty; `register` puts them in first. If vLLM stops
    registering its specs in the engine core by `register_all_kvcache_specs`, `register` must change with it."""
    from vllm.v1 import kv_cache_spec_registry
    from vllm.v1.engine.core import EngineCore

    monkeypatch.setattr(kv_cache_spec_registry, "_REGISTRY_KVCACHESPEC_LIST", {})  # a fresh process
    register()
    registry = kv_cache_spec_registry.KVCacheSpecRegistry
    assert registry.get_manager_class(FullAttentionSpec(**LAYER)) is FullAttentionManager
    assert registry.get_manager_class(SlidingWindowSpec(**LAYER, sliding_window=8)) is SlidingWindowManager
    assert registry.get_manager_class(short_spec(FullAttentionSpec(**LAYER), SETTINGS, BLOCK)) is ShortManager
    assert "register_all_kvcache_specs(vllm_config)" in inspect.getsource(EngineCore._initialize_kv_caches)
