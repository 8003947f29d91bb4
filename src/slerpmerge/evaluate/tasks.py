"""Long-context tasks where far context matters: a pass key hidden in filler, and questions about a document.

Next-token agreement on prose leans mostly on the last few hundred tokens; these tasks need one fact from far back.
Each item is a prompt of about `length` tokens and the answers that count as right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data import long_document

# Questions about the embedded document (src/slerpmerge/data/document.txt) and the strings that answer them.
QUESTIONS = [
    ("Who is the harbour master of Vellmouth?", ("marrow",)),
    ("How long does the ferry crossing to Carrow take?", ("fifty minutes", "50 minutes")),
    ("On which day of the week is the market held?", ("thursday",)),
    ("In which year was the lighthouse on Gull Point built?", ("1861",)),
    ("What was the name of the last lighthouse keeper?", ("hale",)),
    ("In which town is the secondary school?", ("ashford",)),
    ("What is the password for the wireless network in the library?", ("copper-kettle-42",)),
    ("From which reservoir does Vellmouth take its water?", ("tarn",)),
]
DEPTHS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Item:
    task: str
    ids: torch.Tensor  # (1, S)
    answers: tuple[str, ...]
    depth: float


def _filler(filler_ids: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    n = max(0, n)
    reps = (offset + n) // max(1, filler_ids.numel()) + 1
    return filler_ids.repeat(reps)[offset:offset + n]


def passkey_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0) -> list[Item]:
    """A five-digit key stated once at a depth of the filler, asked for at the end."""
    rng = random.Random(seed)
    items = []
    for i in range(count):
        key = str(rng.randint(10000, 99999))
        depth = DEPTHS[i % len(DEPTHS)]
        fact = tokenizer(f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n",
                         add_special_tokens=False, return_tensors="pt").input_ids[0]
        ask = tokenizer("\nWhat is the pass key? The pass key is", add_special_tokens=False,
                        return_tensors="pt").input_ids[0]
        room = length - fact.numel() - ask.numel()
        before = int(room * depth)
        offset = rng.randrange(max(1, filler_ids.numel()))
        ids = torch.cat([_filler(filler_ids, before, offset), fact,
                         _filler(filler_ids, room - before, offset + before), ask])
        items.append(Item("passkey", ids[None], (key,), depth))
    return items


def qa_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0) -> list[Item]:
    """The embedded document placed at a depth of the filler, one question about it at the end."""
    rng = random.Random(seed + 1)
    doc = tokenizer("\n" + long_document() + "\n", add_special_tokens=False, return_tensors="pt").input_ids[0]
    items = []
    for i in range(count):
        question, answers = QUESTIONS[i % len(QUESTIONS)]
        depth = DEPTHS[i % len(DEPTHS)]
        ask = tokenizer(f"\nQuestion: {question}\nAnswer:", add_special_tokens=False,
                        return_tensors="pt").input_ids[0]
        room = max(0, length - doc.numel() - ask.numel())
        before = int(room * depth)
        offset = rng.randrange(max(1, filler_ids.numel()))
        ids = torch.cat([_filler(filler_ids, before, offset), doc,
                         _filler(filler_ids, room - before, offset + before), ask])
        items.append(Item("qa", ids[None], answers, depth))
    return items


def correct(text: str, answers: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(a.lower() in low for a in answers)


TASKS = {"passkey": passkey_items, "qa": qa_items}
