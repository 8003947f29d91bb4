import math

import pytest
import torch

from reference import article_merge

from slerpmerge import merge_sequence, slerp

KEEPS = [(0, 0), (1, 0), (0, 1), (2, 3), (4, 16), (40, 40)]


def reference(hidden: torch.Tensor, keep_start: int, keep_end: int, method: str):
    """The article's procedure, literally and one token at a time, for one row (S, D)."""
    combine = {"slerp": lambda a, b: slerp(a, b, 0.5), "mean": lambda a, b: (a + b) / 2, "drop": None}[method]
    out = article_merge([(hidden[i], float(i)) for i in range(hidden.shape[0])], keep_start, keep_end, combine)
    if not out:
        return hidden[:0], torch.zeros(0)
    return torch.stack([v for v, _ in out]), torch.tensor([p for _, p in out])


def padded_mask(lengths: list[int], side: str) -> torch.Tensor:
    """(B, max length) long: each row's real tokens on the padding's other side."""
    seq = max(lengths)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "left":
            mask[row, seq - n:] = 1
        else:
            mask[row, :n] = 1
    return mask


def expected_length(n: int, keep_start: int, keep_end: int) -> int:
    ks = min(keep_start, n)
    ke = min(keep_end, n - ks)
    m = n - ks - ke
    mid = m if m < 3 else (m // 2 + 1 if m % 2 == 0 else (m + 3) // 2)
    return ks + mid + ke


@pytest.mark.parametrize("keep_start,keep_end", KEEPS)
@pytest.mark.parametrize("method", ["slerp", "mean", "drop"])
def test_every_length_matches_the_article(keep_start, keep_end, method):
    torch.manual_seed(0)
    for n in range(65):
        hidden = torch.randn(1, n, 16)
        out = merge_sequence(hidden, keep_start=keep_start, keep_end=keep_end, method=method)
        want, want_pos = reference(hidden[0], keep_start, keep_end, method)
        assert out.hidden_states.shape == (1, expected_length(n, keep_start, keep_end), 16)
        assert torch.allclose(out.hidden_states[0], want, atol=1e-6), n
        if method != "drop":
            assert torch.equal(out.positions[0], want_pos), n
        assert out.attention_mask.all()
        if n:  # the first and last real tokens and the kept ones come through bit for bit
            ks, ke = min(keep_start, n), min(keep_end, n - min(keep_start, n))
            assert torch.equal(out.hidden_states[0, 0], hidden[0, 0])
            assert torch.equal(out.hidden_states[0, -1], hidden[0, -1])
            assert torch.equal(out.hidden_states[0, :ks], hidden[0, :ks])
            if ke:
                assert torch.equal(out.hidden_states[0, -ke:], hidden[0, -ke:])


def test_short_sequences_stay_as_they_are():
    for n in range(3):
        hidden = torch.randn(2, n, 4)
        out = merge_sequence(hidden)
        assert torch.equal(out.hidden_states, hidden)
        assert torch.equal(out.positions, torch.arange(n, dtype=torch.float32).expand(2, n))


def test_length_formula_examples():
    # n even -> n/2 + 1, n odd -> (n + 3)/2
    assert merge_sequence(torch.randn(1, 512, 4)).hidden_states.shape[1] == 257
    assert merge_sequence(torch.randn(1, 9, 4)).hidden_states.shape[1] == 6


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("keep_start,keep_end", [(0, 0), (1, 2)])
def test_padded_rows_equal_rows_merged_alone(side, keep_start, keep_end):
    torch.manual_seed(1)
    lengths = [0, 1, 2, 3, 7, 12, 19, 20]
    seq = max(lengths)
    hidden = torch.randn(len(lengths), seq, 8)
    mask = padded_mask(lengths, side)
    out = merge_sequence(hidden, mask, keep_start, keep_end)
    width = out.hidden_states.shape[1]
    assert width == max(expected_length(n, keep_start, keep_end) for n in lengths)
    for row, n in enumerate(lengths):
        real = hidden[row:row + 1, seq - n:] if side == "left" else hidden[row:row + 1, :n]
        alone = merge_sequence(real, keep_start=keep_start, keep_end=keep_end)
        k = alone.hidden_states.shape[1]
        cols = slice(width - k, width) if side == "left" else slice(0, k)
        assert torch.equal(out.hidden_states[row, cols], alone.hidden_states[0])
        assert torch.equal(out.positions[row, cols], alone.positions[0])
        assert out.attention_mask[row].sum() == k
        assert out.attention_mask[row, cols].all()
        assert out.attention_mask.dtype == mask.dtype


def test_positions_follow_given_positions():
    hidden = torch.randn(1, 6, 4)
    out = merge_sequence(hidden, positions=torch.arange(10, 16)[None])
    assert out.positions[0].tolist() == [10.0, 11.5, 13.5, 15.0]


def test_bad_masks_and_arguments():
    hidden = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="contiguous"):
        merge_sequence(hidden, torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="same side"):
        merge_sequence(hidden, torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="keep_start"):
        merge_sequence(hidden, keep_start=-1)
    with pytest.raises(ValueError, match="method"):
        merge_sequence(hidden, method="average")
    with pytest.raises(ValueError, match="batch, seq, dim"):
        merge_sequence(hidden[0])
    with pytest.raises(ValueError, match="attention_mask must be"):
        merge_sequence(hidden, torch.ones(2, 4))


def test_half_precision_and_nan_free():
    hidden = torch.randn(2, 33, 16, dtype=torch.bfloat16)
    hidden[0, 3] = 0  # zero vector
    hidden[0, 4] = -hidden[0, 5]  # opposite pair somewhere
    out = merge_sequence(hidden)
    assert out.hidden_states.dtype == torch.bfloat16
    assert torch.isfinite(out.hidden_states).all()


def test_similarity_merges_only_similar_pairs():
    torch.manual_seed(3)
    hidden = torch.randn(1, 11, 8)
    hidden[0, 4] = 3 * hidden[0, 3]  # pair (3, 4): cosine 1
    hidden[0, 6] = -hidden[0, 5]  # pair (5, 6): cosine -1
    out = merge_sequence(hidden, similarity=0.99)
    assert out.positions[0].tolist() == [0, 1, 2, 3.5, 5, 6, 7, 8, 9, 10]
    assert torch.equal(out.hidden_states[0, 3], slerp(hidden[0, 3], hidden[0, 4], 0.5))
    assert merge_sequence(hidden, similarity=-1.0).hidden_states.shape[1] == 7  # every pair: the article's plan
    assert torch.equal(merge_sequence(hidden, similarity=-1.0).hidden_states, merge_sequence(hidden).hidden_states)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_ratio_merges_the_most_similar_fraction(ratio):
    torch.manual_seed(4)
    for n in range(0, 40):
        hidden = torch.randn(1, n, 8)
        out = merge_sequence(hidden, ratio=ratio, keep_end=2)
        full = merge_sequence(hidden, keep_end=2)
        pairs = n - full.hidden_states.shape[1]  # pairs the article's plan merges
        assert out.hidden_states.shape[1] == n - math.ceil(pairs * ratio)
        if n:
            assert torch.equal(out.hidden_states[0, -1], hidden[0, -1])
    hidden = torch.randn(1, 21, 8)
    merged = merge_sequence(hidden, ratio=0.5)
    cos = torch.nn.functional.cosine_similarity(hidden[0, 1:], hidden[0, :-1], dim=-1)  # cos[i-1]: tokens i-1, i
    chosen = {int(f) for f, last in zip(merged.plan.first[0], merged.plan.last[0]) if f != last}
    candidates = {2 * j - 1: float(cos[2 * j - 1]) for j in range(1, 10)}  # the article's pairs (2j-1, 2j)
    assert chosen == set(sorted(candidates, key=candidates.get, reverse=True)[:5])  # ceil(9 / 2) most similar


def test_ratio_rows_of_a_batch_equal_rows_alone():
    torch.manual_seed(5)
    hidden = torch.randn(3, 17, 8)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :12] = 0
    out = merge_sequence(hidden, mask, ratio=0.4, keep_start=1)
    for row in range(3):
        n = int(mask[row].sum())
        alone = merge_sequence(hidden[row:row + 1, 17 - n:], ratio=0.4, keep_start=1)
        k = alone.hidden_states.shape[1]
        assert torch.equal(out.hidden_states[row, -k:], alone.hidden_states[0])
        assert int(out.attention_mask[row].sum()) == k


# -- scored methods: the best tokens exact, the rest merged in rounds or dropped ---------------------------------

def spans_of(merged, row=0):
    p = merged.plan
    return [(int(f), int(l)) for f, l, m in zip(p.first[row], p.last[row], p.mask[row]) if m]


@pytest.mark.parametrize("method", ["guided", "guided-mean", "prune"])
def test_scored_methods_keep_the_best_tokens_exact_and_reach_the_target(method):
    torch.manual_seed(6)
    hidden, scores = torch.randn(1, 40, 8), torch.rand(1, 40)
    out = merge_sequence(hidden, keep_start=2, keep_end=4, method=method, scores=scores, target=0.25)
    assert out.hidden_states.shape[1] == 10  # ceil(40 · 0.25)
    spans = spans_of(out)
    singles = [f for f, l in spans if f == l]
    for f in singles:  # every token kept alone comes through bit for bit, at its own position
        j = [s for s, _ in spans].index(f)
        assert torch.equal(out.hidden_states[0, j], hidden[0, f]) and out.positions[0, j] == f
    assert {0, 1, 36, 37, 38, 39} <= set(singles)  # the kept ends
    best = scores[0, 2:36].argsort(descending=True) + 2
    if method == "prune":  # the 4 middle slots go to the 4 best
        assert sorted(singles) == sorted([0, 1, 36, 37, 38, 39, *best[:4].tolist()])
    else:  # protect 0.5 of 4 slots wants the 2 best; with the runs they leave that would need 5, so the best 1
        assert best[0] in singles
        covered = [j for f, l in spans for j in range(f, l + 1)]
        assert covered == list(range(40))  # nothing dropped: every token is in exactly one span


def test_guided_spans_are_count_weighted_slerps_of_their_tokens():
    """Five tokens down to three, the ends protected: the middle three merge over two rounds, (a, b) first at
    t = 1/2, then with c at t = 1/3, at their mean position."""
    torch.manual_seed(7)
    hidden = torch.randn(1, 5, 8)
    scores = torch.tensor([[9.0, 0, 0, 0, 9.0]])
    out = merge_sequence(hidden, method="guided", scores=scores, target=0.6, protect=1.0)
    assert spans_of(out) == [(0, 0), (1, 3), (4, 4)]
    a, b, c = hidden[0, 1:4]
    torch.testing.assert_close(out.hidden_states[0, 1], slerp(slerp(a, b, 0.5), c, 1 / 3), atol=1e-6, rtol=1e-5)
    assert out.positions[0].tolist() == [0.0, 2.0, 4.0]
    mean = merge_sequence(hidden, method="guided-mean", scores=scores, target=0.6, protect=1.0)
    torch.testing.assert_close(mean.hidden_states[0, 1], (a + b + c) / 3)


@pytest.mark.parametrize("method", ["guided", "prune"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_scored_rows_of_a_batch_equal_rows_alone(method, side):
    torch.manual_seed(8)
    lengths = [0, 1, 5, 17, 30]
    seq = max(lengths)
    hidden, scores = torch.randn(len(lengths), seq, 8), torch.rand(len(lengths), seq)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, seq - n:] = 1 if side == "left" else 0
        mask[row, :n] = 1 if side == "right" else mask[row, :n]
    out = merge_sequence(hidden, mask, 1, 2, method, scores=scores, target=0.3)
    width = out.hidden_states.shape[1]
    for row, n in enumerate(lengths):
        cols = slice(seq - n, seq) if side == "left" else slice(0, n)
        alone = merge_sequence(hidden[row:row + 1, cols], None, 1, 2, method, scores=scores[row:row + 1, cols],
                               target=0.3)
        k = alone.hidden_states.shape[1]
        got = slice(width - k, width) if side == "left" else slice(0, k)
        assert torch.equal(out.hidden_states[row, got], alone.hidden_states[0])
        assert torch.equal(out.positions[row, got], alone.positions[0])
        assert int(out.attention_mask[row].sum()) == k


def test_scored_methods_need_scores_and_pair_options_stay_with_pairs():
    hidden = torch.randn(1, 10, 4)
    with pytest.raises(ValueError, match="needs one score per token"):
        merge_sequence(hidden, method="prune")
    with pytest.raises(ValueError, match="ratio applies to method slerp, mean, drop, not prune"):
        merge_sequence(hidden, method="prune", scores=torch.rand(1, 10), ratio=0.5)
    with pytest.raises(ValueError, match="target applies to method guided, guided-mean, prune, not slerp"):
        merge_sequence(hidden, target=0.5)
    with pytest.raises(ValueError, match=r"target is the fraction of tokens kept, in \(0, 1\]"):
        merge_sequence(hidden, method="guided", scores=torch.rand(1, 10), target=0.0)


@pytest.mark.parametrize("method", ["slerp", "mean", "drop", "guided", "guided-mean", "prune"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_every_method_keeps_the_last_real_token_exact_at_keep_end_0(method, side):
    """The last real token's output predicts the next token: no method may merge or drop it, even when keep_end is
    0 and it scores lowest of its row."""
    from slerpmerge.methods import METHODS

    torch.manual_seed(0)
    lengths = [37, 20, 9, 3]
    seq = max(lengths)
    hidden = torch.randn(len(lengths), seq, 8)
    mask = padded_mask(lengths, side)
    scores = torch.rand(len(lengths), seq)
    last_in = [seq - 1 if side == "left" else n - 1 for n in lengths]
    for i, j in enumerate(last_in):
        scores[i, j] = -1.0  # the worst of its row
    scored = METHODS[method].scored
    merged = merge_sequence(hidden, mask, 0, 0, method, scores=scores if scored else None,
                            target=0.25 if scored else None)
    for i, j in enumerate(last_in):
        row = merged.attention_mask[i].nonzero().flatten()
        out = int(row[-1])
        assert int(merged.plan.first[i, out]) == int(merged.plan.last[i, out]) == j, (i, method)
        assert torch.equal(merged.hidden_states[i, out], hidden[i, j])
