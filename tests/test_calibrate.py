"""Calibration: fact ranks against literal counts, head choice on planted scores, per-head scores against the
model's own eager attention weights."""

import pytest
import torch
from tiny import tiny_model

from slerpmerge.calibrate import choose_heads, fact_rank, head_scores, ranks_by, table, token_ranks
from slerpmerge.evaluate.tasks import Item


def item(ids: torch.Tensor, fact) -> Item:
    return Item(task="once", ids=ids, answers=("x",), depth=0.5, fact=fact)


def test_token_ranks_count_the_tokens_scored_higher():
    scores = torch.tensor([[0.1, 0.7, 0.3, 0.7, 0.0]])
    want = [[1 + sum(o > s for o in row) + sum(o == s for o in row[:j]) for j, s in enumerate(row)]
            for row in scores.tolist()]  # ties: the earlier token first
    assert token_ranks(scores).tolist() == want == [[4, 1, 3, 2, 5]]


def test_fact_rank_is_the_worst_token_of_the_best_place():
    ranks = torch.tensor([5, 1, 9, 2, 3, 7])
    # the answer at tokens (1, 2) needs 9 kept; at (3, 4) it needs 3
    assert int(fact_rank(ranks, ((1, 2), (3, 4)))) == 3
    assert int(fact_rank(ranks, ((0,),))) == 5


def planted(heads: int, length: int, fact: tuple[int, ...], finder: int, seed: int) -> torch.Tensor:
    """(H, S) random scores where head `finder` scores the fact's tokens highest."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(heads, length, generator=g)
    scores[finder, list(fact)] = 2.0
    return scores


def test_choose_heads_finds_the_planted_head_and_the_table_judges_it_apart():
    facts = [(3 + i, 4 + i) for i in range(8)]
    items = [item(torch.zeros(1, 40, dtype=torch.long), (f,)) for f in facts]
    scores = [planted(4, 40, f, finder=2, seed=i) for i, f in enumerate(facts)]
    assert choose_heads(scores, items, 1, radius=0) == [2]
    assert ranks_by(scores, items, [2], radius=0).tolist() == [2] * 8  # both answer tokens on top
    rows = table([[s] for s in scores], items, 1, radius=0)
    assert rows == [{"layer": 0, "heads": [2], "pooled_median": rows[0]["pooled_median"],
                     "pooled_worst": rows[0]["pooled_worst"], "heads_median": 2.0, "heads_worst": 2}]


def test_spread_lets_a_head_that_finds_the_name_keep_the_value():
    """The head scores the token before the answer; with radius 1 the answer's tokens share that score."""
    scores = torch.zeros(1, 20)
    scores[0, 9] = 1.0
    it = item(torch.zeros(1, 20, dtype=torch.long), ((10, 11),))
    assert int(ranks_by([scores], [it], [0], radius=0)[0]) > 3
    assert int(ranks_by([scores], [it], [0], radius=2)[0]) <= 5


@torch.no_grad()
def test_head_scores_are_the_eager_attention_weights_per_head():
    model = tiny_model("gemma3", attn="eager")
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    weights = model(ids, output_attentions=True).attentions  # per layer (1, H, S, S)
    got = head_scores(model, [item(ids, ((5,),))], window=4)[0]
    assert len(got) == model.config.num_hidden_layers
    for layer, w in enumerate(weights):
        torch.testing.assert_close(got[layer], w[0, :, -4:, :].mean(1), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_question_free_scores_are_those_of_the_context_alone():
    """With the question cut off, the last queries are the context's own: eager attention of the context alone; and
    another scorer is that scorer's (heavy: every later query of the context)."""
    model = tiny_model("llama", attn="eager")
    ids = torch.randint(3, 128, (1, 30), generator=torch.Generator().manual_seed(1))
    it = Item(task="once", ids=ids, answers=("x",), depth=0.5, fact=((5,),), ask=6)
    weights = model(ids[:, :24], output_attentions=True).attentions
    got = head_scores(model, [it], window=4, question_free=True)[0]
    heavy = head_scores(model, [it], window=4, score="heavy", question_free=True)[0]
    whole = head_scores(model, [it], window=4)[0]
    for layer, w in enumerate(weights):
        assert got[layer].shape == (model.config.num_attention_heads, 24) and whole[layer].shape[-1] == 30
        torch.testing.assert_close(got[layer], w[0, :, -4:, :].mean(1), atol=1e-5, rtol=1e-4)
        later = torch.arange(24, 0, -1).float()  # queries at or after each token
        torch.testing.assert_close(heavy[layer], w[0].sum(1) / later, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("count", [1, 3])
def test_choose_heads_returns_sorted_distinct_heads(count):
    facts = [(2, 3)] * 4
    items = [item(torch.zeros(1, 16, dtype=torch.long), (f,)) for f in facts]
    scores = [planted(4, 16, f, finder=3, seed=i) for i, f in enumerate(facts)]
    heads = choose_heads(scores, items, count, radius=0)
    assert heads == sorted(set(heads)) and len(heads) == count and 3 in heads
