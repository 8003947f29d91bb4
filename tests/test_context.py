"""Compress once, ask many (`slerpmerge.prefill`): against the unpatched model, against the patched model's own
one-token steps, and one question against another."""

import pytest
import torch

import slerpmerge
from slerpmerge.compat import cache_kwargs
from tiny import tiny_model
from transformers.cache_utils import DynamicCache

GUIDED = dict(layer_cutoff=1, method="guided", keep_start=2, keep_end=4, target=0.5, window=4)


def ids(seed: int, *shape: int) -> torch.Tensor:
    return torch.randint(3, 128, shape, generator=torch.Generator().manual_seed(seed))


def greedy(out, context_len: int) -> list:
    return out[:, context_len:].tolist()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_setting_that_shortens_nothing_answers_as_the_unpatched_model(arch):
    model = tiny_model(arch)
    context, question = ids(0, 2, 30), ids(1, 2, 5)
    want = model.generate(torch.cat([context, question], 1), max_new_tokens=6, do_sample=False)
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=64):
        got = slerpmerge.prefill(model, context).generate(question, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_question_equals_the_patched_models_own_one_token_steps(arch):
    """The question's tokens fed one at a time at their true positions after the merged prefill: the same first
    answer token's logits as the several-token question `Context.generate` runs."""
    model = tiny_model(arch)
    context, question = ids(2, 1, 40), ids(3, 1, 6)
    with slerpmerge.merging(model, **GUIDED), torch.no_grad():
        out = slerpmerge.prefill(model, context).generate(question, max_new_tokens=1, do_sample=False,
                                                          output_logits=True, return_dict_in_generate=True)
        cache = DynamicCache(config=model.config)
        model(context, **cache_kwargs(model, cache), use_cache=True)
        for i in range(question.shape[1]):
            positions = torch.tensor([[context.shape[1] + i]])
            logits = model(question[:, i:i + 1], position_ids=positions, **cache_kwargs(model, cache),
                           use_cache=True).logits[0, -1]
        assert slerpmerge.patching.merged_lengths(model)[0] < context.shape[1]  # the context was shortened
    torch.testing.assert_close(out.logits[0][0], logits, rtol=1e-4, atol=1e-4)


def test_every_question_sees_the_same_context():
    model = tiny_model("llama")
    context, first, second = ids(4, 2, 40), ids(5, 2, 5), ids(6, 2, 3)
    with slerpmerge.merging(model, **GUIDED):
        kept = slerpmerge.prefill(model, context)
        a1 = kept.generate(first, max_new_tokens=5, do_sample=False)
        b1 = kept.generate(second, max_new_tokens=5, do_sample=False)
        a2 = kept.generate(first, max_new_tokens=5, do_sample=False)  # after another question: the same answer
        b2 = slerpmerge.prefill(model, context).generate(second, max_new_tokens=5, do_sample=False)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)


def test_left_padded_rows_answer_as_each_row_alone():
    model = tiny_model("llama")
    long, short, question = ids(7, 1, 36), ids(8, 1, 28), ids(9, 2, 4)
    context = torch.cat([long, torch.cat([torch.zeros(1, 8, dtype=torch.long), short], 1)])
    mask = torch.ones_like(context)
    mask[1, :8] = 0
    with slerpmerge.merging(model, **GUIDED):
        both = slerpmerge.prefill(model, context, mask).generate(question, max_new_tokens=5, do_sample=False)
        alone = [slerpmerge.prefill(model, row).generate(question[i:i + 1], max_new_tokens=5, do_sample=False)
                 for i, row in enumerate((long, short))]
    assert both[0, 40:].tolist() == alone[0][0, 40:].tolist()
    assert both[1, 40:].tolist() == alone[1][0, 32:].tolist()


def test_bad_use_is_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="patched model"):
        slerpmerge.prefill(model, ids(10, 1, 20))
    with slerpmerge.merging(model, **GUIDED):
        kept = slerpmerge.prefill(model, ids(10, 1, 20))
        with pytest.raises(ValueError, match="rows"):
            kept.generate(ids(11, 2, 3))
        right = torch.ones(1, 20, dtype=torch.long)
        right[0, -3:] = 0
        with pytest.raises(ValueError, match="left"):
            slerpmerge.prefill(model, ids(10, 1, 20), right)
    with pytest.raises(ValueError, match="no longer patched"):
        kept.generate(ids(11, 1, 3))
