"""A decode step at each cutoff: nothing merged; the new tokens attend to each stage's cache at their true positions.

Functions of the `Merger` ``m`` whose cutoff hooks call them: they continue what its last prefill left
(``m.prompt``)."""

from __future__ import annotations

import functools

import torch

from .layer_inputs import LayerInputs, slides
from .state import Record


def step(m, k: int, hidden: torch.Tensor) -> None:
    """Say what stage k's layers see for this step's tokens ``hidden`` (B, q, D)."""
    call, prompt = m.call, m.prompt
    if not prompt.continued_by(call.cache):
        raise RuntimeError(
            "this cache was not filled by a merged prefill of this patched model; "
            "start generation from an empty cache while patched"
        )
    if prompt.right_padded:
        raise ValueError("generation continues every row from its last position, which right padding fills "
                         "with a pad token: pad prompts on the left (tokenizer.padding_side = 'left')")
    record = prompt.stages[k]
    batch, q, _ = hidden.shape
    positions = call.positions
    if positions is None:
        positions = torch.arange(call.past, call.past + q, device=hidden.device)[None]
    positions = positions.expand(batch, q)
    entries = None
    if slides(m, k, prompt.length + prompt.since + q):
        # the tokens since the prompt sit at consecutive positions before this call's
        since = positions[:, :1] - torch.arange(prompt.since, 0, -1, device=hidden.device)
        entries = torch.cat([record.positions, since.to(record.positions.dtype), positions.float()], 1)
    shifted = not isinstance(record.shift, int) or record.shift != 0
    if shifted:
        positions = positions - record.shift
    kv_mask = None
    if record.mask is not None or call.pad_mask is not None:  # built only if a layer needs a mask
        kv_mask = functools.partial(_kv_mask, m, record, batch, q, hidden.device)
    start = record.length + prompt.since
    reuse = record.mask is None and not shifted and entries is None
    m.inputs[k] = LayerInputs(hidden, positions, kv_mask, start, reuse=reuse, entries=entries)


def _kv_mask(m, record: Record, batch: int, q: int, device: torch.device) -> torch.Tensor:
    """(B, S_k + new) 2D mask of the stage's cache: its merged prompt, then the tokens since."""
    call, prompt = m.call, m.prompt
    new = prompt.since + q  # tokens since the prompt, this step's included
    prefix = record.mask
    if prefix is None:
        prefix = torch.ones(batch, record.length, dtype=torch.bool, device=device)
    suffix = (call.pad_mask[:, prompt.length:].bool() if call.pad_mask is not None
              else torch.ones(batch, new, dtype=torch.bool, device=device))
    return torch.cat([prefix, suffix], dim=1)
