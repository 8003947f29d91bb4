"""The rules both adapters share, against literal loops."""

import random

import torch

from slerpmerge.rules import lacks_bos, within_window


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
