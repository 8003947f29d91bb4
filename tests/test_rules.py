"""The rules both adapters share, against literal loops."""

import random

import torch

from slerpmerge.rules import lacks_bos, within_window, word_starts, word_table
from tiny import begins, piece_tokenizer


def test_within_window_is_the_literal_rule():
    rng = random.Random(0)
    for _ in range(50):
        window = rng.randint(1, 12)
        queries = sorted(rng.uniform(0, 40) for _ in range(rng.randint(1, 6)))
        keys = sorted(rng.choice([rng.uniform(0, 40), float(rng.randint(0, 40))]) for _ in range(rng.randint(1, 9)))
        got = within_window(torch.tensor(queries), torch.tensor(keys), window)
        want = [[q - k < window for k in keys] for q in queries]
        assert got.tolist() == want


def test_within_window_batches_over_leading_dims():
    q, k = torch.rand(3, 4) * 20, torch.rand(3, 7) * 20
    got = within_window(q, k, 5)
    assert got.shape == (3, 4, 7)
    for b in range(3):
        assert torch.equal(got[b], within_window(q[b], k[b], 5))


def test_lacks_bos():
    assert lacks_bos(torch.tensor([1, 5, 1]), 1)
    assert not lacks_bos(torch.tensor([1, 1]), 1)
    assert not lacks_bos(torch.tensor([7]), None)  # a tokenizer that adds none: nothing to check


def literal_word_starts(tokenizer, ids: list[int]) -> list[bool]:
    """A token begins a word when the text it adds to the decoded prompt so far begins with whitespace, or the text
    before it ends with whitespace."""
    out, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1])
        added = text[len(before):]
        out.append(i == 0 or added[:1].isspace() or before[-1:].isspace())
        before = text
    return out


def test_word_starts_follow_a_real_tokenizers_words(smollm2):
    _, tokenizer = smollm2
    table = word_table(smollm2[0].name_or_path)
    text = ("One of the special magic uuids for 8c4a-1f is: 1ff49b78-8946-4e85-b59c-de66bacfb3d0.\nThe number "
            "2921859 is here.  Two  spaces,\tand a tab; über naïve 東京.")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    got = word_starts(torch.tensor(ids), table).tolist()
    assert got[1:] == literal_word_starts(tokenizer, ids)[1:]
    value = tokenizer(" 1ff49b78-8946-4e85-b59c-de66bacfb3d0", add_special_tokens=False).input_ids
    assert tokenizer.decode(value[:1]) == " "  # SmolLM2 spells the space before a digit alone
    starts = word_starts(torch.tensor(value), table).tolist()
    assert len(value) > 30 and starts == [True, True] + [False] * (len(value) - 2)  # the value: one word


def test_word_table_of_a_word_piece_tokenizer(tmp_path):
    piece_tokenizer().save_pretrained(tmp_path)
    table = word_table(str(tmp_path))
    assert table[:, 0].tolist() == [begins(i) for i in range(table.shape[0])]
    assert table[:, 1].tolist() == [i < 3 for i in range(table.shape[0])]  # only the special tokens end a word
    ids = torch.tensor([[5, 6, 7, 8, 9, 200]])  # 200: an id past the tokenizer's vocabulary stands alone
    assert word_starts(ids, table).tolist() == [[False, True, False, False, True, True]]
    assert word_table(str(tmp_path / "none")) is None
