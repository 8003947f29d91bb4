"""Merge plans, checked against literal one-row implementations of each rule."""

import math
import random

import pytest
import torch

from slerpmerge.plan import (
    chunk_scores,
    middle_ranks,
    plan_from_joins,
    plan_rounds,
    plan_select,
    protected_count,
    target_lengths,
)


def spans(plan, row):
    return [(int(f), int(l)) for f, l, m in zip(plan.first[row], plan.last[row], plan.mask[row]) if m]


def compose(rounds, n):
    """The spans of all rounds together, by following each round's spans through the previous ones."""
    current = [(i, i) for i in range(n)]
    for plan in rounds:
        current = [(current[f][0], current[l][1]) for f, l in spans(plan, 0)]
    return current


def literal_budget(n, ks, ke, target):
    ks = min(ks, n)
    ke = min(ke, n - ks)
    m = n - ks - ke
    return ks, ke, m, min(n, max(math.ceil(n * target), ks + ke + min(m, 1)))


def literal_order(scores, ks, ke, n):
    """The middle tokens from the best score to the worst (ties: the earlier first)."""
    middle = list(range(ks, n - ke))
    return sorted(middle, key=lambda j: (-scores[j], j))


def literal_select(scores, ks, ke, target):
    ke = max(ke, 1)  # the last token always stays: it predicts the next one
    n = len(scores)
    ks, ke, m, length = literal_budget(n, ks, ke, target)
    best = literal_order(scores, ks, ke, n)[:length - ks - ke]
    kept = sorted(set(range(ks)) | set(range(n - ke, n)) | set(best))
    return [(i, i) for i in kept]


def literal_chunked(scores, ks, ke, chunk, words=None):
    """Each middle token scored as the best of its run: runs of `chunk` tokens counted from the middle's start, or,
    given `words` (a flag per token: it begins a word), from each word's start, a word longer than `chunk` in
    several runs."""
    ke = max(ke, 1)
    n = len(scores)
    ks, ke, m, _ = literal_budget(n, ks, ke, 1.0)
    runs, size = [], chunk
    for j in range(ks, n - ke):
        if size == chunk or (words is not None and words[j]):
            runs.append([])
            size = 0
        runs[-1].append(j)
        size += 1
    out = list(scores)
    for run in runs:
        best = max(scores[j] for j in run)
        for j in run:
            out[j] = best
    return out


def runs_after_protecting(protected, ks, ke, n):
    stretches, inside = 0, False
    for j in range(ks, n - ke):
        free = j not in protected
        stretches += free and not inside
        inside = free
    return stretches


def literal_rounds(scores, ks, ke, target, protect):
    """Protect the best tokens (as many as `protect` asks, few enough that every stretch left can merge to one
    token within the budget), then pair the units of each stretch round after round; the last round merges only
    the pairs it needs, lowest summed score first."""
    ke = max(ke, 1)  # the last token always stays: it predicts the next one
    n = len(scores)
    ks, ke, m, length = literal_budget(n, ks, ke, target)
    budget = length - ks - ke
    order = literal_order(scores, ks, ke, n)
    wanted = math.floor(budget * protect + 0.5)
    k = max(k for k in range(0, min(wanted, m) + 1)
            if k + runs_after_protecting(set(order[:k]), ks, ke, n) <= budget)
    protected = set(order[:k]) | set(range(ks)) | set(range(n - ke, n))
    units = [dict(span=(i, i), protected=i in protected, score=scores[i]) for i in range(n)]
    while len(units) > length:
        candidates = []  # (index of the second unit of a pair, summed score)
        run = 0
        for j, u in enumerate(units):
            run = 0 if u["protected"] else run + 1
            if not u["protected"] and run % 2 == 0:
                candidates.append((j, u["score"] + units[j - 1]["score"]))
        if not candidates:
            break
        chosen = sorted(candidates, key=lambda c: (c[1], c[0]))[:len(units) - length]
        chosen = {j for j, _ in chosen}
        merged = []
        for j, u in enumerate(units):
            if j in chosen:
                a = merged.pop()
                merged.append(dict(span=(a["span"][0], u["span"][1]), protected=False, score=a["score"] + u["score"]))
            else:
                merged.append(u)
        units = merged
    return [u["span"] for u in units]


def padded(rows, side="left"):
    seq = max(len(r) for r in rows)
    scores = torch.zeros(len(rows), seq)
    mask = torch.zeros(len(rows), seq, dtype=torch.bool)
    for i, r in enumerate(rows):
        cols = slice(seq - len(r), seq) if side == "left" else slice(0, len(r))
        scores[i, cols] = torch.tensor(r)
        mask[i, cols] = True
    return scores, mask


def random_rows(count, seed, longest=40, distinct=True):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        n = rng.randint(0, longest)
        rows.append([rng.random() if distinct else rng.choice([0.0, 0.5, 1.0]) for _ in range(n)])
    return rows


@pytest.mark.parametrize("keeps", [(0, 0), (1, 2), (4, 6)])
@pytest.mark.parametrize("target", [0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("side", ["left", "right"])
def test_select_keeps_the_best_tokens_of_each_row(keeps, target, side):
    rows = random_rows(12, seed=hash((keeps, target)) % 1000, distinct=False)  # ties too
    scores, mask = padded(rows, side)
    plan = plan_select(mask, scores, *keeps, target)
    for i, r in enumerate(rows):
        offset = mask.shape[1] - len(r) if side == "left" else 0
        got = [(f - offset, l - offset) for f, l in spans(plan, i)]
        assert got == literal_select(r, *keeps, target), (i, r)


@pytest.mark.parametrize("keeps", [(0, 0), (1, 2), (4, 6)])
@pytest.mark.parametrize("target", [0.1, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("protect", [0.0, 0.3, 0.5, 1.0])
def test_rounds_follow_the_literal_rule_row_by_row(keeps, target, protect):
    rows = random_rows(10, seed=hash((keeps, target, protect)) % 1000)
    scores, mask = padded(rows)
    rounds = plan_rounds(mask, scores, *keeps, target, protect)
    for i, r in enumerate(rows):
        alone_scores, alone_mask = padded([r])
        got = compose(plan_rounds(alone_mask, alone_scores, *keeps, target, protect), len(r))
        assert got == literal_rounds(r, *keeps, target, protect), (i, r)
        assert len(got) == literal_budget(len(r), keeps[0], max(keeps[1], 1), target)[3]  # exactly the target
    # the batch: each row's spans, through all rounds as one plan, are its spans alone (shifted by its padding)
    overall = rounds[0]
    for plan in rounds[1:]:
        overall = overall.then(plan)
    for i, r in enumerate(rows):
        offset = mask.shape[1] - len(r)
        got = [(f - offset, l - offset) for f, l in spans(overall, i)]
        assert got == literal_rounds(r, *keeps, target, protect), (i, r)


def test_protected_count_is_the_largest_that_fits():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 30)
        r = [rng.random() for _ in range(n)]
        scores, mask = padded([r])
        rank = middle_ranks(mask, scores, 1, 1)
        budget, wanted = rng.randint(1, n), rng.randint(0, n)
        got = int(protected_count(rank, torch.tensor([[budget]]), torch.tensor([[wanted]])))
        order = literal_order(r, min(1, n), min(1, n - 1), n)
        fits = [k for k in range(0, min(wanted, len(order)) + 1)
                if k + runs_after_protecting(set(order[:k]), min(1, n), min(1, n - 1), n) <= budget]
        assert got == max(fits, default=0)


def test_target_lengths():
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, :6] = False  # 4 real tokens
    mask[2] = False
    assert target_lengths(mask, 1, 1, 0.25).tolist() == [[3], [3], [0]]  # ceil(2.5); ends + one middle; empty
    lengths = torch.arange(1, 5000)
    rows = torch.arange(5000)[None] < lengths[:, None]
    for target in (0.3, 0.1, 0.7):  # not rounded up past the exact product (float32 makes ceil(50 * 0.3) 16)
        want = [math.ceil(round(n * target, 9)) for n in lengths.tolist()]
        assert target_lengths(rows, 0, 0, target)[:, 0].tolist() == want


def test_plans_only_join_pairs():
    mask = torch.ones(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="pairs"):
        plan_from_joins(mask, torch.tensor([[False, True, True, False, False]]))
    with pytest.raises(ValueError, match="pairs"):
        plan_from_joins(mask, torch.tensor([[True, False, False, False, False]]))


@pytest.mark.parametrize("keeps", [(0, 0), (1, 2), (4, 6)])
@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("side", ["left", "right"])
def test_chunks_are_ranked_and_kept_whole(keeps, chunk, side):
    rows = random_rows(12, seed=hash((keeps, chunk)) % 1000, longest=60)
    scores, mask = padded(rows, side)
    plan = plan_select(mask, scores, *keeps, 0.3, chunk)
    for i, r in enumerate(rows):
        offset = mask.shape[1] - len(r) if side == "left" else 0
        got = [f - offset for f, _ in spans(plan, i)]
        assert [(j, j) for j in got] == literal_select(literal_chunked(r, *keeps, chunk), *keeps, 0.3), (i, r)
        ks, ke, m, _ = literal_budget(len(r), keeps[0], max(keeps[1], 1), 1.0)
        starts = range(ks, len(r) - ke, chunk)
        cut = [s for s in starts if 0 < len(set(got) & set(range(s, min(s + chunk, len(r) - ke)))) <
               len(range(s, min(s + chunk, len(r) - ke)))]
        assert len(cut) <= 1, (i, r, got)  # every chunk kept whole or dropped whole, but one


@pytest.mark.parametrize("chunk", [2, 5])
def test_rounds_protect_by_chunks(chunk):
    rows = random_rows(10, seed=chunk)
    scores, mask = padded(rows)
    for i, r in enumerate(rows):
        alone_scores, alone_mask = padded([r])
        got = compose(plan_rounds(alone_mask, alone_scores, 2, 3, 0.3, 0.5, chunk), len(r))
        assert got == literal_rounds(literal_chunked(r, 2, 3, chunk), 2, 3, 0.3, 0.5), (i, r)


@pytest.mark.parametrize("keeps", [(0, 0), (1, 2), (4, 6)])
@pytest.mark.parametrize("chunk", [2, 5])
@pytest.mark.parametrize("side", ["left", "right"])
def test_runs_follow_words(keeps, chunk, side):
    rows = random_rows(12, seed=hash((keeps, chunk, side)) % 1000, longest=60)
    gen = torch.Generator().manual_seed(chunk)
    words = [(torch.rand(len(r), generator=gen) < 0.3).tolist() for r in rows]  # a word of ~3 tokens, some long
    scores, mask = padded(rows, side)
    starts, _ = padded([[float(w) for w in ws] for ws in words], side)
    plan = plan_select(mask, scores, *keeps, 0.3, chunk, starts.bool())
    for i, r in enumerate(rows):
        offset = mask.shape[1] - len(r) if side == "left" else 0
        got = [f - offset for f, _ in spans(plan, i)]
        want = literal_select(literal_chunked(r, *keeps, chunk, words[i]), *keeps, 0.3)
        assert [(j, j) for j in got] == want, (i, r, words[i])
        alone_scores, alone_mask = padded([r])
        rounds = compose(plan_rounds(alone_mask, alone_scores, *keeps, 0.3, 0.5, chunk,
                                     torch.tensor([words[i]])), len(r))
        assert rounds == literal_rounds(literal_chunked(r, *keeps, chunk, words[i]), *keeps, 0.3, 0.5), (i, r)


def test_a_long_value_comes_through_whole_as_a_word():
    # a 30-token value (a UUID a character a token) led by one high-scoring token: runs of 8 keep its first run
    # only; runs that follow words keep all of it
    scores = torch.full((1, 128), 0.1)
    scores[0, 40] = 0.9
    scores[0, 41:70] = 0.05
    scores[0, 90:110] = 0.5  # prose that ranks above the value's later pieces
    mask = torch.ones(1, 128, dtype=torch.bool)
    words = torch.zeros(1, 128, dtype=torch.bool)
    words[0, ::3] = True  # prose: a word every 3 tokens
    words[0, 40:70] = False
    words[0, 40] = words[0, 70] = True  # the value: one word
    fixed = {f for f, _ in spans(plan_select(mask, scores, 0, 1, 0.3, chunk=8), 0)}
    worded = {f for f, _ in spans(plan_select(mask, scores, 0, 1, 0.3, chunk=48, word_starts=words), 0)}
    assert not set(range(40, 70)) <= fixed
    assert set(range(40, 70)) <= worded


def test_a_value_below_the_cut_comes_through_whole():
    # a seven-token value whose first token scores high and the rest low: per token only its first piece survives
    scores = torch.full((1, 64), 0.1)
    scores[0, 16:23] = torch.tensor([0.9, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    scores[0, 40:48] = 0.5  # another run, above the value's later pieces
    mask = torch.ones(1, 64, dtype=torch.bool)
    alone = {f for f, _ in spans(plan_select(mask, scores, 0, 1, 0.25), 0)}
    whole = {f for f, _ in spans(plan_select(mask, scores, 0, 1, 0.25, chunk=8), 0)}
    assert not set(range(16, 23)) <= alone
    assert set(range(16, 23)) <= whole
    assert chunk_scores(mask, scores, 0, 1, 1) is scores
