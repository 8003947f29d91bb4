"""Long-context tasks where far context matters: facts hidden in filler, and questions about a document.

Next-token agreement on prose leans mostly on the last few hundred tokens; these tasks need one fact from far back.
Each item is a prompt of `length` tokens (a few more or less for the document), the answers that count as right,
where the fact sits (a fraction of the way in) and which of the prompt's tokens state it (for calibration). A prompt
begins as the tokenizer begins a text: with its beginning-of-sequence token where it adds one (Gemma 3's `<bos>`),
which the model's first layers use as an attention sink; without it a model like Gemma 3 loses far facts, merged
or not.

    passkey   a five-digit key, stated twice ("The pass key is 12345. Remember it. 12345 is the pass key.")
    once      the same key stated once
    word      a secret word of several tokens, stated once
    facts     six key-value facts (the codes of six doors) spread through the filler; one is asked for
    qa        the embedded document at a depth of the filler, one question about it
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data import long_document
from .corpus import begin

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
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
WORDS = ("marmalade", "periwinkle", "quarantine", "tangerine", "gooseberry", "chrysanthemum", "kaleidoscope",
         "ventriloquist", "bergamot", "sarsaparilla", "trebuchet", "zeppelin", "harpsichord", "pomegranate",
         "cormorant", "salamander", "lighthouse", "candlewick", "thunderclap", "bluebottle", "honeysuckle",
         "nightingale", "peppercorn", "watercress")
DOORS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "silver", "golden")


@dataclass(frozen=True)
class Item:
    task: str
    ids: torch.Tensor  # (1, S)
    answers: tuple[str, ...]
    depth: float
    fact: tuple[tuple[int, ...], ...]  # the prompt's tokens that spell the answer, at each place it is stated
    ask: int = 0  # the question's tokens at the end of the prompt

    @property
    def context(self) -> torch.Tensor:
        """(1, S - ask) the prompt without its question."""
        return self.ids[:, :self.ids.shape[1] - self.ask]


def _filler(filler_ids: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    n = max(0, n)
    reps = (offset + n) // max(1, filler_ids.numel()) + 1
    return filler_ids.repeat(reps)[offset:offset + n]


def _encode(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]


def _stating(tokenizer, text: str, answers: tuple[str, ...]) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """`text` as ids, and the tokens that overlap each place an answer is written in it (any case)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    places, low = [], text.lower()
    for answer in answers:
        start = low.find(answer.lower())
        while start >= 0:
            end = start + len(answer)
            places.append(tuple(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start))
            start = low.find(answer.lower(), end)
    return torch.tensor(enc["input_ids"]), places


def _place(pieces: list[torch.Tensor], depths: list[float], ask: torch.Tensor, filler_ids: torch.Tensor,
           length: int, offset: int, begin: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """`begin`, then filler of `length` tokens in all with each piece inserted at its depth and `ask` at the end (the
    same filler with or without `begin`); returns the ids and where each piece starts."""
    room = max(0, length - sum(p.numel() for p in pieces) - ask.numel())
    order = sorted(range(len(pieces)), key=lambda i: depths[i])
    parts, spans, used, at = [begin], [None] * len(pieces), 0, begin.numel()
    for i in order:
        before = int(room * depths[i]) - used
        parts.append(_filler(filler_ids, before, offset + used))
        used += max(0, before)
        at += max(0, before)
        spans[i] = at
        parts.append(pieces[i])
        at += pieces[i].numel()
    parts += [_filler(filler_ids, room - used, offset + used), ask]
    return torch.cat(parts), spans


def _stated(tokenizer, kind: str, length: int, count: int, seed: int, filler_ids: torch.Tensor) -> list[Item]:
    rng = random.Random(f"{kind}-{seed}")
    items = []
    for i in range(count):
        depth = DEPTHS[i % len(DEPTHS)]
        if kind == "word":
            secret = WORDS[rng.randrange(len(WORDS))]
            fact = f"\nThe secret word is {secret}. Remember it.\n"
            ask = "\nWhat is the secret word? The secret word is"
        else:
            secret = str(rng.randint(10000, 99999))
            tail = f" {secret} is the pass key." if kind == "passkey" else ""
            fact = f"\nThe pass key is {secret}. Remember it.{tail}\n"
            ask = "\nWhat is the pass key? The pass key is"
        offset = rng.randrange(max(1, filler_ids.numel()))
        piece, places = _stating(tokenizer, fact, (secret,))
        ask_ids = _encode(tokenizer, ask)
        ids, (at,) = _place([piece], [depth], ask_ids, filler_ids, length, offset, begin(tokenizer))
        items.append(Item(kind, ids[None], (secret,), depth, _shift(places, at), ask_ids.numel()))
    return items


def passkey_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0) -> list[Item]:
    """A five-digit key stated twice in one sentence pair, at a depth of the filler, asked for at the end."""
    return _stated(tokenizer, "passkey", length, count, seed, filler_ids)


def once_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0) -> list[Item]:
    """A five-digit key stated once."""
    return _stated(tokenizer, "once", length, count, seed, filler_ids)


def word_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0) -> list[Item]:
    """A secret word of several tokens, stated once."""
    return _stated(tokenizer, "word", length, count, seed, filler_ids)


def facts_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0,
                facts: int = 6) -> list[Item]:
    """Six doors' four-digit codes spread evenly through the filler; the code of one door, at a depth, is asked."""
    rng = random.Random(f"facts-{seed}")
    items = []
    spread = [(k + 0.5) / facts for k in range(facts)]
    for i in range(count):
        doors = rng.sample(DOORS, facts)
        codes = [str(rng.randint(1000, 9999)) for _ in doors]
        asked = min(range(facts), key=lambda k: abs(spread[k] - DEPTHS[i % len(DEPTHS)]))
        stated = [_stating(tokenizer, f"\nThe code for the {d} door is {c}.\n", (c,)) for d, c in zip(doors, codes)]
        pieces = [piece for piece, _ in stated]
        ask = _encode(tokenizer, f"\nWhat is the code for the {doors[asked]} door? The code for the "
                                 f"{doors[asked]} door is")
        offset = rng.randrange(max(1, filler_ids.numel()))
        ids, spans = _place(pieces, spread, ask, filler_ids, length, offset, begin(tokenizer))
        items.append(Item("facts", ids[None], (codes[asked],), spread[asked], _shift(stated[asked][1], spans[asked]),
                          ask.numel()))
    return items


def qa_items(tokenizer, filler_ids: torch.Tensor, length: int, count: int, seed: int = 0) -> list[Item]:
    """The embedded document placed at a depth of the filler (or alone, when it fills `length`), one question
    about it at the end."""
    rng = random.Random(f"qa-{seed}")
    items = []
    for i in range(count):
        question, answers = QUESTIONS[i % len(QUESTIONS)]
        depth = DEPTHS[(i // len(QUESTIONS)) % len(DEPTHS)]
        ask = _encode(tokenizer, f"\nQuestion: {question}\nAnswer:")
        offset = rng.randrange(max(1, filler_ids.numel()))
        doc, places = _stating(tokenizer, "\n" + long_document() + "\n", answers)
        ids, (at,) = _place([doc], [depth], ask, filler_ids, length, offset, begin(tokenizer))
        items.append(Item("qa", ids[None], answers, depth, _shift(places, at), ask.numel()))
    return items


def _shift(places: list[tuple[int, ...]], at: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(at + i for i in place) for place in places)


def correct(text: str, answers: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(a.lower() in low for a in answers)


TASKS = {"passkey": passkey_items, "once": once_items, "word": word_items, "facts": facts_items, "qa": qa_items}
