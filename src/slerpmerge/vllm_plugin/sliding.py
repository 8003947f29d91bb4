"""The sliding-window layers after the cutoff on vLLM's CPU attention backend: each query's window in true positions.

A window of W merged entries spans more text than W tokens, so these layers slide over true positions, as the
transformers hooks do: a query at position p sees the entries whose (mean) position is above p - W. Consecutive
entries' positions differ by at least 1, so that is always the last w <= W entries, but w differs by query, and the
CPU kernel takes one window per call:

    a merged prompt longer than W    its rows attend to its own keys through SDPA, with the window as a mask
    a decode row                     the kernel on its request, with w = the generated tokens within W of it plus
                                     the prompt's entries within W; requests with the same w share one call
    the rest                         the kernel with the model's window W

Only what the rows need is computed; no row twice. What a step's layers share (the masks, the groups' rows and their
kernel metadata) is made once per step. A step where every row has w = W runs the stock forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from vllm import _custom_ops as ops
from vllm import envs
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

from ..rules import within_window


@dataclass(frozen=True)
class Group:
    """The requests the kernel takes with one window."""

    requests: torch.Tensor  # (g,) their indices in the step
    rows: torch.Tensor  # (n,) their short rows
    query_start: torch.Tensor  # (g + 1,) int32: where each one's rows start among `rows`


@dataclass(frozen=True)
class Windows:
    """One step's windows for the later sliding layers, over the short rows (T', ...)."""

    spans: list  # [(start, end, mask (n, n) bool)]: merged prompts through SDPA, causal and within the window
    groups: dict  # w -> Group
    kernel: dict = field(default_factory=dict)  # w -> (seq_lens, scheduler metadata): the first layer's


def check_impl(impl) -> None:
    """What this module can narrow: the CPU backend's impl, without ALiBi, soft-capping or sinks."""
    if not isinstance(impl, CPUAttentionBackendImpl):
        raise ValueError(f"slerpmerge slides the sliding-window layers after the cutoff over true positions, which "
                         f"it does on vLLM's CPU attention backend only, not {type(impl).__name__}: choose a cutoff "
                         "after the last sliding layer, or use the transformers path")
    if impl.alibi_slopes is not None or impl.logits_soft_cap or impl.sinks is not None:
        raise ValueError("slerpmerge cannot narrow a sliding window with ALiBi, logit soft-capping or attention sinks")


def plan(prompt: list[bool], query_start: list[int], short_start: list[int], true: torch.Tensor,
         prompts: list[tuple[torch.Tensor, int] | None], window: int) -> Windows | None:
    """Each request's window in this step, or None where every request's is the model's.

    prompt (R,): whether request i's whole prompt is in the step; query_start, short_start (R + 1,): its rows before
    and after the cutoff; true (T',) float: each short row's true position; prompts[i]: for a decoding request, its
    prompt's entries' true positions (S',) and its prompt's length P.
    """
    spans, requests = [], {}
    for i, whole in enumerate(prompt):
        a, b = short_start[i], short_start[i + 1]
        w = window
        if whole:
            length = query_start[i + 1] - query_start[i]
            if b - a < length and length > window:  # merged, and longer than one window
                positions = true[a:b]
                near = within_window(positions, positions, window)  # (n, n)
                spans.append((a, b, near.tril_()))
                continue
        else:
            entries, length = prompts[i]
            p = float(true[a])  # the decode row's position
            # the generated tokens within W of it, then the prompt's entries within W
            w = min(window, int(p) - length + 1) + int(within_window(true[a:b], entries, window).sum())
        requests.setdefault(w, []).append(i)
    if not spans and list(requests) in ([window], []):
        return None
    groups = {}
    for w, members in requests.items():
        lengths = torch.tensor([short_start[i + 1] - short_start[i] for i in members])
        rows = torch.cat([torch.arange(short_start[i], short_start[i + 1]) for i in members])
        query_start = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        groups[w] = Group(torch.tensor(members), rows, query_start)
    return Windows(spans, groups)


class Prompts:
    """Each prompt's entries after the cutoff, kept from its prefill for its request's decode steps, and each step's
    windows planned from them."""

    def __init__(self, window: int):
        self.window = window
        self.entries: dict[int, tuple[torch.Tensor, int]] = {}  # first KV block -> its prompt's entries' true
        # positions (S',) and length P

    def windows(self, layout, true: torch.Tensor) -> Windows | None:
        """Note each whole prompt's entries, and plan each row's window in the later sliding layers (``true`` (T',):
        the short rows' true positions)."""
        whole, blocks = layout.prompt.tolist(), layout.first_block.tolist()
        starts, shorts = layout.query_start.tolist(), layout.short_start.tolist()
        for i in range(len(whole)):
            if whole[i]:
                self.entries[blocks[i]] = (true[shorts[i]:shorts[i + 1]].clone(), starts[i + 1] - starts[i])
        prompts = [None if whole[i] else self.entries[blocks[i]] for i in range(len(whole))]
        return plan(whole, starts, shorts, true, prompts, self.window)


def narrowed(impl, windows: Callable[[], Windows | None]):
    """``impl.forward`` with each row's window in true positions (``windows()``: the step's), where any row's is
    narrower than the model's."""
    stock = impl.forward

    def forward(layer, query, key, value, kv_cache, attn_metadata, output=None, **kwargs):
        step = windows()
        if step is None or attn_metadata is None:
            return stock(layer, query, key, value, kv_cache, attn_metadata, output=output, **kwargs)
        return attend(impl, layer, query, key, value, kv_cache, attn_metadata, output, step)

    return forward


def attend(impl, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
           metadata, output: torch.Tensor, windows: Windows) -> torch.Tensor:
    """The step's attention for one later sliding layer; query, output (T', H, d), key, value (T', H_kv, d); the
    layer's cache already holds this step's keys and values."""
    for a, b, mask in windows.spans:
        q, k, v = (x[a:b].transpose(0, 1)[None] for x in (query, key, value))  # (1, H, n, d), (1, H_kv, n, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=impl.scale, enable_gqa=True)
        output[a:b] = out[0].transpose(0, 1)
    blocks, heads, block_size, _ = kv_cache.shape
    key_cache, value_cache = kv_cache.view(blocks, heads, block_size * 2, -1).chunk(2, dim=2)
    for w, group in windows.groups.items():
        if w not in windows.kernel:  # the same lengths in every later layer; the block tables are each group's
            seq_lens = metadata.seq_lens[group.requests]
            scheduler = ops.cpu_attn_get_scheduler_metadata(
                num_reqs=len(group.requests), num_heads=impl.num_heads, num_kv_heads=impl.num_kv_heads,
                head_dim=impl.head_size, seq_lens=seq_lens, dtype=query.dtype, query_start_loc=group.query_start,
                causal=True, sliding_window_size=w, isa=layer.isa, enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
                kv_cache_dtype=impl.kv_cache_dtype)
            windows.kernel[w] = (seq_lens, scheduler)
        seq_lens, scheduler = windows.kernel[w]
        block_table = metadata.block_table[group.requests]  # this layer's KV-cache group's
        rows = query[group.rows]
        out = torch.empty_like(rows)
        ops.cpu_attention_with_kv_cache(
            query=rows, key_cache=key_cache, value_cache=value_cache, output=out,
            query_start_loc=group.query_start, seq_lens=seq_lens, scale=impl.scale, causal=True, alibi_slopes=None,
            sliding_window=w, block_table=block_table, softcap=0, scheduler_metadata=scheduler, s_aux=None,
            k_scale=layer._k_scale_float, v_scale=layer._v_scale_float, kv_cache_dtype=impl.kv_cache_dtype)
        output[group.rows] = out
    return output
