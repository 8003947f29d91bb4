"""Where one vLLM step's tokens sit after the cutoff: index work on lengths, with no engine in sight.

vLLM packs a step's requests into one run of tokens (T, D): request i holds rows query_start[i]..query_start[i+1].
A request whose whole sequence is this step's query is a prompt; it leaves `merged_length(P)` rows after the cutoff.
Any other request is decoding one token, which stays one row, or is an empty row that pads a CUDA graph's batch.
The later layers' caches hold a request's short prompt at cache indices 0..S'-1 and its generated tokens after it,
so for as long as the request lives its later layers see a sequence `shrink` = P - S' shorter than its early layers
do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepLayout:
    """One step's rows after the cutoff. All tensors on the CPU; long."""

    query_start: torch.Tensor  # (R + 1,) where each request's rows start before the cutoff
    short_start: torch.Tensor  # (R + 1,) and after it
    prompt: torch.Tensor  # (R,) bool: requests whose whole prompt is in this step
    seq_lens: torch.Tensor  # (R,) the later layers' sequence lengths, this step's rows included
    cache_index: torch.Tensor  # (T',) each row's place in its request's later-layer cache
    slots: torch.Tensor  # (T',) each row's KV-cache slot in the later layers
    first_block: torch.Tensor  # (R,) each request's first KV-cache block: its key while it lives (`Shrinks`)

    @property
    def shortened(self) -> bool:
        """Whether any request has fewer rows after the cutoff than before it."""
        return int(self.short_start[-1]) != int(self.query_start[-1])


class Shrinks:
    """P - S' of each live request, keyed by the first KV-cache block of its row in the block table.

    The engine passes no prompt length to a decode step, but a live request's first block is its own (no prefix
    caching), and its prompt step writes the entry before any of its decode steps reads it; a finished request's
    block goes to a new request, whose prompt step overwrites the entry.
    """

    def __init__(self) -> None:
        self.by_block: dict[int, int] = {}

    def record(self, block: int, shrink: int) -> None:
        self.by_block[block] = shrink

    def lookup(self, block: int) -> int:
        if block not in self.by_block:
            raise RuntimeError(
                "slerpmerge: a decode step for a request whose prompt this engine did not shorten (block "
                f"{block}); the prompt must arrive whole: no chunked prefill, no prefix caching")
        return self.by_block[block]


def plan_step(query_start: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
              slot_mapping: torch.Tensor, block_size: int, shrinks: Shrinks,
              length: Callable[[int], int]) -> StepLayout:
    """The later layers' layout of one step.

    query_start (R + 1,), seq_lens (R,): the step as the engine scheduled it; block_table (R, blocks) and
    slot_mapping (T,): the KV-cache blocks of each request and the slot of each of this step's tokens;
    length(P): the rows a prompt of P tokens leaves.
    """
    query_start, seq_lens = query_start.long().cpu(), seq_lens.long().cpu()
    num_reqs = seq_lens.shape[0]
    query_lens = query_start[1:] - query_start[:-1]
    prompt = (query_lens == seq_lens) & (query_lens > 0)  # an empty row pads a CUDA graph's batch
    partial = ~prompt & (query_lens > 1)
    if bool(partial.any()):
        i = int(partial.nonzero()[0])
        raise RuntimeError(
            f"slerpmerge: a request arrived with {int(query_lens[i])} of its {int(seq_lens[i])} tokens in one step; "
            "the score needs the whole prompt at once: no chunked prefill, prefix caching or speculative decoding")
    first_blocks = block_table[:num_reqs, 0].tolist()
    short_lens, shrink = [], []
    for i in range(num_reqs):
        if prompt[i]:
            n = int(seq_lens[i])
            kept = length(n)
            shrinks.record(first_blocks[i], n - kept)
            short_lens.append(kept)
            shrink.append(n - kept)
        elif query_lens[i] == 0:
            short_lens.append(0)
            shrink.append(0)
        else:
            short_lens.append(1)
            shrink.append(shrinks.lookup(first_blocks[i]))
    short_lens_t = torch.tensor(short_lens, dtype=torch.long)
    short_start = torch.nn.functional.pad(short_lens_t.cumsum(0), (1, 0))
    new_seq_lens = seq_lens - torch.tensor(shrink, dtype=torch.long)
    req = torch.repeat_interleave(torch.arange(num_reqs), short_lens_t)  # (T',) each row's request
    offset = torch.arange(req.shape[0]) - short_start[req]  # its index among the request's rows
    is_prompt = prompt[req]
    cache_index = torch.where(is_prompt, offset, new_seq_lens[req] - 1)
    table = block_table[:num_reqs].long().cpu()
    from_table = table[req, cache_index // block_size] * block_size + cache_index % block_size
    # A prompt's row j sits where the engine put the prompt's token j: its own slot mapping says where.
    slot_mapping = slot_mapping.long().cpu()
    from_engine = slot_mapping[(query_start[req] + offset).clamp(max=slot_mapping.shape[0] - 1)]
    if not torch.equal(from_table[is_prompt], from_engine[is_prompt]):
        raise RuntimeError(f"slerpmerge: the block table is not in blocks of {block_size} tokens as expected")
    slots = torch.where(is_prompt, from_engine, from_table)
    return StepLayout(query_start, short_start, prompt, new_seq_lens, cache_index, slots,
                      torch.tensor(first_blocks, dtype=torch.long))
