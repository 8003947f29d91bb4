"""The rules both adapters follow, each written once: the transformers hooks and the vLLM plugin call these, and
neither copies them.

    sliding windows   a sliding layer after the cutoff slides over true positions: a query sees the entries whose
                      (mean) position lies within the model's window of its own
    the BOS token     a shortened model leans on its first tokens as an attention sink; a prompt that lacks the
                      beginning-of-sequence token its tokenizer adds is warned about, once
    words             (`words=True`) a word begins at a token led by whitespace or after one that ends in it, and
                      at every special token; values (numbers, UUIDs) are words, kept or dropped whole
"""

from __future__ import annotations

import functools

import torch


def within_window(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """(..., q) and (..., k) true positions -> (..., q, k) bool: which keys a sliding layer of ``window`` lets each
    query see (causality apart). A merged entry counts by its span's mean position."""
    return queries[..., :, None] - keys[..., None, :] < window


@functools.lru_cache(maxsize=8)
def leading_bos(path: str) -> int | None:
    """The beginning-of-sequence id that the tokenizer saved at ``path`` (a model's folder, or a name in the local
    cache) puts first, or None where it adds none or none is at hand offline. A shortened model leans on its first
    tokens as an attention sink; without the token it was trained to begin with they are no sink, and far facts
    go (docs/how-it-works.md)."""
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # no tokenizer beside the weights, or none cached: nothing to check against
        return None
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos if bos is not None and ids[:1] == [bos] else None


def lacks_bos(first: torch.Tensor, bos: int | None) -> bool:
    """Whether any prompt's first token (``first`` (N,)) is not the tokenizer's ``bos`` (None: nothing to check)."""
    return bos is not None and bool((first != bos).any())


NO_BOS = ("a prompt does not begin with the beginning-of-sequence token (id {bos}) that this model's tokenizer "
          "adds: its first tokens are then no attention sink and shortening loses far more; tokenize with the "
          "tokenizer's special tokens")


@functools.lru_cache(maxsize=8)
def word_table(path: str) -> torch.Tensor | None:
    """(V, 2) bool per token id of the tokenizer saved at ``path``: whether its text begins a word (led by
    whitespace, or a special token) and whether it ends one (ends in whitespace, or a special token); None where no
    tokenizer is at hand offline. Each id is decoded after a plain letter, so that a tokenizer that drops a
    leading space at the start of a text keeps it."""
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        return None
    anchor = tokenizer("a", add_special_tokens=False).input_ids
    lead = len(tokenizer.decode(anchor))
    texts = tokenizer.batch_decode([[*anchor, i] for i in range(len(tokenizer))])
    special = set(tokenizer.all_special_ids)
    table = torch.tensor([(s[lead:lead + 1].isspace(), s[-1:].isspace() and len(s) > lead) for s in texts])
    table[sorted(i for i in special if i < len(table))] = True
    return table


def word_starts(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(..., S) token ids -> (..., S) bool: the tokens that begin a word (`word_table`); an id the tokenizer does
    not know (a model's vocabulary can be larger) stands alone."""
    known = ids < table.shape[0]
    flags = table.to(ids.device)[ids.clamp(max=table.shape[0] - 1)] | ~known[..., None]  # (..., S, 2)
    after = torch.zeros_like(flags[..., 1])
    after[..., 1:] = flags[..., :-1, 1]  # the token before ends in whitespace
    return flags[..., 0] | after
