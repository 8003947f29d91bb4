"""Evaluation text: local files, or a default that ships with Python, cut into windows of exact token length."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch


def default_texts() -> list[str]:
    """Python's own reference prose (`pydoc_data.topics`, PSF licence): in the standard library, nothing to fetch."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def read_texts(path: str | Path | None, field: str = "text") -> list[str]:
    """.txt files (one text each), .jsonl files (`field` of each line) or a folder of them; None: the default."""
    if path is None:
        return default_texts()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    texts = []
    for f in files:
        if not f.exists():
            raise ValueError(f"corpus file {f} does not exist")
        if f.suffix == ".jsonl":
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        texts.append(json.loads(line)[field])
                    except (ValueError, KeyError, TypeError) as e:
                        raise ValueError(f"{f}:{n}: expected a JSON object with a {field!r} field ({e})") from None
        elif f.suffix == ".txt":
            texts.append(f.read_text(encoding="utf-8"))
        else:
            raise ValueError(f"corpus file {f}: expected .txt or .jsonl")
    if not texts:
        raise ValueError(f"no .txt or .jsonl text found in {path}")
    return texts


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one (N,) stream of token ids, separated by the end-of-text token when there is one."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False).input_ids + sep)
    return torch.tensor(ids, dtype=torch.long)


def begin(tokenizer) -> torch.Tensor:
    """The special tokens the tokenizer puts before a text (its BOS token, or none): every prompt starts so."""
    ids = tokenizer("").input_ids
    return torch.tensor(ids[:1] if ids and ids[0] == tokenizer.bos_token_id else [], dtype=torch.long)


def windows(stream: torch.Tensor, length: int, count: int, seed: int = 0,
            start: torch.Tensor | None = None) -> list[torch.Tensor]:
    """`count` windows of exactly `length` tokens from distinct, non-overlapping places, chosen by `seed`; each
    begins with ``start`` (`begin`'s tokens) and continues with the stream."""
    start = start if start is not None else stream[:0]
    body = length - start.numel()
    slots = stream.numel() // body
    if slots < count:
        raise ValueError(f"the corpus holds {stream.numel()} tokens: too few for {count} windows of {length}")
    chosen = sorted(random.Random(seed).sample(range(slots), count))
    return [torch.cat([start, stream[s * body:(s + 1) * body]]) for s in chosen]
