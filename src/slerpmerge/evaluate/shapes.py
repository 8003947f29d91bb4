"""Where the question sits in a retrieval prompt, and how a setting answers it there.

    end     the question ends the prompt, which is read at once: the scored methods see it at the cutoff
    chat    the same as a chat turn: the document and question as the user's message, the answer's first words as
            the assistant's (needs the tokenizer's chat template)
    later   the context is prefilled and shortened alone; the question and the answer continue it at their true
            positions (a chat over one document, a cached context, kvpress's protocol): nothing the merge keeps can
            depend on the question
    reselect  as `later`, but the context is kept at the cutoff (`prefill(..., reselect=True)`) and the question
            chooses the context's tokens with its own queries there

A baseline in `later` and `reselect` shortens the context alone: truncation keeps its ends, select its best-scored
tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..compat import cache_kwargs
from ..context import prefill
from ..methods import METHODS
from ..patching import merged_lengths, merging
from .runs import generate, prepared
from .tasks import Item

SHAPES = ("end", "chat", "later", "reselect")


def chat_parts(tokenizer) -> tuple[str, str]:
    """The chat template's text before a user's message and after it (up to where the assistant answers)."""
    if not tokenizer.chat_template:
        raise ValueError(f"a chat prompt needs a chat template; {tokenizer.name_or_path or 'this tokenizer'} has "
                         "none (a base model)")
    user, assistant = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}],
                                                    add_generation_prompt=True, tokenize=False).split("\x00")
    return user, assistant


def shaped(tokenizer, item: Item, shape: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (1, C), question (1, Q)) of an item in a shape; `end` and `chat` are read as one prompt."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    if shape != "chat":
        return item.context, item.ids[:, item.context.shape[1]:]
    if not tokenizer.chat_template:
        raise ValueError(f"the chat shape needs a chat template; {tokenizer.name_or_path or 'this tokenizer'} has "
                         "none (a base model)")
    user, assistant = chat_parts(tokenizer)
    encode = lambda text: tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids  # noqa: E731
    body = item.context[:, 1:] if int(item.context[0, 0]) == tokenizer.bos_token_id else item.context
    asked = tokenizer.decode(item.ids[0, item.context.shape[1]:])
    question, _, lead = asked.rpartition("?")  # "\nWhat is the pass key? The pass key is"
    return torch.cat([encode(user), body], 1), encode(question + "?" + assistant + lead.strip())


@torch.inference_mode()
def answer(model, context: torch.Tensor, question: torch.Tensor, setting: dict, shape: str, new_tokens: int,
           pad_id) -> tuple[list[int], int]:
    """The greedy answer tokens of a setting in a shape, and how many tokens the last layers saw."""
    if shape not in ("later", "reselect"):
        return generate(model, torch.cat([context, question], 1), setting, new_tokens, pad_id)[1:]
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    if setting["method"] in METHODS:
        with merging(model, **setting):
            kept = prefill(model, context, reselect=shape == "reselect")
            short = None if shape == "reselect" else merged_lengths(model)[-1]
            out = kept.generate(question, **kwargs)
            if short is None:  # the context's tokens the question chose, as the later layers saw them
                short = merged_lengths(model)[-1] - question.shape[1]
        return out[0, context.shape[1] + question.shape[1]:].tolist(), short  # fewer where it ends early
    context, _ = prepared(model, context, setting)  # the base model's, or a baseline's shortened context
    cache = DynamicCache(config=model.config)
    model(context, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    ids = torch.cat([context, question], 1)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(model, cache), **kwargs)
    return out[0, ids.shape[1]:].tolist(), context.shape[1]
