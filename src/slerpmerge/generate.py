"""Timed generation, base and merged side by side on the same prompt."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from .patching import merging


@dataclass
class Timed:
    text: str
    tokens: list[int]
    prefill_s: float  # time to the first new token
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decode rate: the tokens after the first, over the time after the first."""
        decode_s = self.total_s - self.prefill_s
        return (len(self.tokens) - 1) / decode_s if len(self.tokens) > 1 and decode_s > 0 else 0.0


class FirstTokenClock(BaseStreamer):
    """generate() hands a streamer the prompt first, then each new token: the second call marks prefill's end."""

    def __init__(self):
        self.calls, self.first_token_at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self):
        pass


def encode(tokenizer, prompt: str, chat: bool) -> dict:
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
    return tokenizer(prompt, return_tensors="pt")


@torch.inference_mode()
def timed_generate(model, tokenizer, inputs: dict, max_new_tokens: int, warmup: bool = True) -> Timed:
    """Greedy generation, timed. A short warm-up run first keeps one-off costs out of the figures."""
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if warmup:
        model.generate(**inputs, max_new_tokens=2, **kwargs)
    clock = FirstTokenClock()
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=clock, **kwargs)
    total = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    prefill = (clock.first_token_at or time.perf_counter()) - start
    return Timed(tokenizer.decode(new, skip_special_tokens=True), new, prefill, total)


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many generated tokens are equal before the first difference: greedy tokens after it follow from
    different text, so counting matches further on says nothing."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(model, tokenizer, inputs: dict, max_new_tokens: int, **patch_kwargs) -> dict:
    """Base, then merged, on the same inputs; figures for both and the ratios between them."""
    base = timed_generate(model, tokenizer, inputs, max_new_tokens)
    with merging(model, **patch_kwargs):
        merged = timed_generate(model, tokenizer, inputs, max_new_tokens)
    return {
        "base": base,
        "merged": merged,
        "speedup_prefill": base.prefill_s / merged.prefill_s,
        "speedup_decode": merged.tokens_per_s / base.tokens_per_s if base.tokens_per_s else float("nan"),
        "same_tokens": same_prefix(base.tokens, merged.tokens),
    }
