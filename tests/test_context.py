"""Read once, ask many (`slerpmerge.prefill`). Compressed once: against the unpatched model, against the patched
model's own one-token steps, and one question against another. Kept for reselection: against the patched model
reading context and question as one prompt whose question the settings keep whole, on every architecture and on
SmolLM2 and Gemma 3; each question alone against several on one context; padded rows against each row alone."""

import pytest
import torch

import slerpmerge
from slerpmerge.compat import cache_kwargs
from slerpmerge.data import long_document
from tiny import ARCHITECTURES, tiny_model, with_pieces
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
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with slerpmerge.merging(model, **GUIDED):
        both = slerpmerge.prefill(model, context, mask).generate(question, **kw)
        alone = [slerpmerge.prefill(model, row).generate(question[i:i + 1], **kw)
                 for i, row in enumerate((long, short))]
    assert both.sequences[0, 40:].tolist() == alone[0].sequences[0, 40:].tolist()
    assert both.sequences[1, 40:].tolist() == alone[1].sequences[0, 32:].tolist()
    for i, one in enumerate(alone):  # a padded row's context sits at the positions generate gives its question
        torch.testing.assert_close(torch.stack(both.logits)[:, i], torch.stack(one.logits)[:, 0], rtol=1e-5,
                                   atol=1e-5)


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


def test_an_empty_question_is_refused():
    model = tiny_model("llama")
    with slerpmerge.merging(model, **GUIDED):
        for reselect in (False, True):
            kept = slerpmerge.prefill(model, ids(10, 1, 20), reselect=reselect)
            with pytest.raises(ValueError, match="real token"):
                kept.generate(ids(11, 1, 0))
            with pytest.raises(ValueError, match="real token"):
                kept.generate(ids(11, 1, 3), attention_mask=torch.zeros(1, 3, dtype=torch.long))


# -- reselect: every question chooses its own tokens ----------------------------------------------------------------

# The reference reads context (S tokens) and question (Q) as one prompt: keep_end covers the question too, and the
# target is what keeping ceil(target · S) context tokens and the whole question leaves of S + Q (S + Q = 64, so the
# fraction is exact in binary). The window (4) lies within the question, so the same queries rank.
S, Q = 56, 8
RESELECT = dict(layer_cutoff=1, keep_start=2, target=0.5, window=4, spread=2)
KEEP_END = 4


def one_prompt(settings: dict, size: int, question: int) -> dict:
    """The settings that read context + question as one prompt and keep the same tokens."""
    kept = -(-size * settings["target"] // 1) + question
    return {**settings, "keep_end": settings["keep_end"] + question, "target": kept / (size + question)}


def answers(model, settings: dict, context, question, reselect: bool):
    """Greedy tokens and their logits, and the true positions the later layers read for the first of them."""
    with slerpmerge.merging(model, **settings), torch.no_grad():
        if reselect is None:
            out = model.generate(torch.cat([context, question], 1), max_new_tokens=4, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        else:
            out = slerpmerge.prefill(model, context, reselect=reselect).generate(
                question, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
        entries = model._slerpmerge.prefill[0].positions
    return out.sequences[:, context.shape[1] + question.shape[1]:], torch.stack(out.logits), entries


@pytest.mark.parametrize("method", ["guided", "prune"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_question_on_a_kept_context_answers_as_one_prompt(arch, method):
    """Sliding windows before the cutoff (Mistral, Gemma 3), after it (Qwen2's later layers), or none; a mix read
    at layer 0, whose sliding cache keeps only its window of the context's keys."""
    model = tiny_model(arch)
    context, question = ids(20, 1, S), ids(21, 1, Q)
    settings = dict(RESELECT, method=method, keep_end=KEEP_END, mix={"score": "keynorm", "layer": 0})
    got, got_logits, entries = answers(model, settings, context, question, reselect=True)
    want, want_logits, want_entries = answers(model, one_prompt(settings, S, Q), context, question, reselect=None)
    assert entries.shape[1] == S // 2 + Q < S + Q  # the context was shortened, the question kept whole
    torch.testing.assert_close(entries, want_entries)  # the same tokens, at the same places
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)


def test_a_short_context_whose_keys_the_question_pushes_out_of_a_sliding_cache():
    """Mistral's sliding caches (8) hold all 6 context tokens after the read, but not once the question's 10 have
    run: the key-norm mix at layer 0 must still rank by the context's own keys."""
    model = tiny_model("mistral")
    context, question = ids(34, 1, 6), ids(35, 1, 10)
    settings = dict(layer_cutoff=1, method="prune", target=0.5, window=4, keep_end=0,
                    mix={"score": "keynorm", "layer": 0})
    got, got_logits, entries = answers(model, settings, context, question, reselect=True)
    want, want_logits, want_entries = answers(model, one_prompt(settings, 6, 10), context, question, reselect=None)
    assert entries.shape[1] == 3 + 10
    torch.testing.assert_close(entries, want_entries)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_question_on_a_kept_context_keeps_whole_words_as_one_prompt(arch, tmp_path):
    """words=True: the context's word starts, read with the context, shape the runs each question keeps."""
    model = with_pieces(tiny_model(arch), tmp_path)
    context, question = ids(36, 1, S), ids(37, 1, Q)
    settings = dict(RESELECT, method="prune", keep_end=KEEP_END, chunk=3, words=True)
    got, got_logits, entries = answers(model, settings, context, question, reselect=True)
    want, want_logits, want_entries = answers(model, one_prompt(settings, S, Q), context, question, reselect=None)
    fixed = answers(model, {**settings, "words": None}, context, question, reselect=True)[2]
    assert not torch.equal(entries, fixed)  # runs by words keep other tokens than runs of 3
    torch.testing.assert_close(entries, want_entries)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["original", "reindex"])
def test_a_question_on_a_kept_context_answers_as_one_prompt_with_each_positions(positions):
    model = tiny_model("gemma3")
    context, question = ids(22, 1, S), ids(23, 1, Q)
    settings = dict(RESELECT, method="guided", keep_end=KEEP_END, positions=positions)
    got, got_logits, _ = answers(model, settings, context, question, reselect=True)
    want, want_logits, _ = answers(model, one_prompt(settings, S, Q), context, question, reselect=None)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)


def test_each_question_chooses_its_own_tokens():
    """Two questions keep different context tokens, and neither keeps what the context alone would."""
    model = tiny_model("llama")
    context = ids(24, 1, S)
    settings = dict(RESELECT, method="prune", keep_end=KEEP_END)
    kept = [answers(model, settings, context, ids(seed, 1, Q), reselect=True)[2][0, :-Q] for seed in (25, 26)]
    once = answers(model, settings, context, ids(25, 1, Q), reselect=False)[2][0]
    assert kept[0].shape == kept[1].shape and not torch.equal(kept[0], kept[1])
    assert not torch.equal(kept[0], once[:kept[0].shape[0]])


def test_several_questions_on_a_kept_context_answer_as_each_alone():
    model = tiny_model("gemma3")
    context, first, second = ids(27, 2, S), ids(28, 2, Q), ids(29, 2, 3)
    with slerpmerge.merging(model, **RESELECT, method="guided", keep_end=KEEP_END):
        kept = slerpmerge.prefill(model, context, reselect=True)
        a1 = kept.generate(first, max_new_tokens=5, do_sample=False)
        b1 = kept.generate(second, max_new_tokens=5, do_sample=False)
        a2 = kept.generate(first, max_new_tokens=5, do_sample=False)
        b2 = slerpmerge.prefill(model, context, reselect=True).generate(second, max_new_tokens=5, do_sample=False)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_left_padded_rows_of_a_kept_context_choose_as_each_row_alone(arch):
    model = tiny_model(arch)
    long, short, question = ids(30, 1, S), ids(31, 1, S - 10), ids(32, 2, Q)
    context = torch.cat([long, torch.cat([torch.zeros(1, 10, dtype=torch.long), short], 1)])
    mask = torch.ones_like(context)
    mask[1, :10] = 0
    with slerpmerge.merging(model, **RESELECT, method="guided", keep_end=KEEP_END):
        both = slerpmerge.prefill(model, context, mask, reselect=True).generate(
            question, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
        alone = [slerpmerge.prefill(model, row, reselect=True).generate(
            question[i:i + 1], max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
            for i, row in enumerate((long, short))]
    for i, one in enumerate(alone):
        assert both.sequences[i, S + Q:].tolist() == one.sequences[0, -5:].tolist()
        torch.testing.assert_close(torch.stack(both.logits)[:, i], torch.stack(one.logits)[:, 0],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_a_question_on_a_kept_context_answers_as_one_prompt_on_a_real_model(name, request):
    """The model's default settings; Gemma's context is longer than its 512-token window, and its mix reads a
    sliding layer."""
    from slerpmerge.models import BUILTINS

    model, tokenizer = request.getfixturevalue(name)
    defaults = BUILTINS[{"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}[name]].defaults
    question = tokenizer(" What is the document about? Answer:", return_tensors="pt",
                         add_special_tokens=False).input_ids
    size = 1024 - question.shape[1]  # S + Q = 1024: the reference's target is exact
    context = tokenizer(long_document() + "\n\n" + long_document(), return_tensors="pt").input_ids[:, :size]
    assert context.shape[1] == size > (getattr(model.config, "sliding_window", None) or 0)
    got, got_logits, entries = answers(model, defaults, context, question, reselect=True)
    want, want_logits, want_entries = answers(model, one_prompt(defaults, size, question.shape[1]), context,
                                              question, reselect=None)
    assert entries.shape[1] < size
    torch.testing.assert_close(entries, want_entries)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-3, atol=1e-3)


def test_bad_use_of_a_kept_context_is_refused():
    model = tiny_model("llama")
    context = ids(33, 1, 30)
    with pytest.raises(ValueError, match="patched model"):
        slerpmerge.prefill(model, context, reselect=True)
    for settings, match in ((dict(layer_cutoff=1, keep_end=4), "scored method"),
                            (dict(GUIDED, layer_cutoff=[1, 2]), "one cutoff"),
                            (dict(GUIDED, score="heavy"), "heavy"),
                            (dict(GUIDED, mix={"score": "heavy", "layer": 0}), "heavy"),
                            (dict(GUIDED, cache="recompute"), "merged")):
        with slerpmerge.merging(model, **settings), pytest.raises(ValueError, match=match):
            slerpmerge.prefill(model, context, reselect=True)
    with slerpmerge.merging(model, **GUIDED):
        kept = slerpmerge.prefill(model, context, reselect=True)
        with pytest.raises(ValueError, match="rows"):
            kept.generate(ids(34, 2, 3))
        for repeat in (dict(num_beams=2), dict(num_return_sequences=2, do_sample=True)):
            with pytest.raises(ValueError, match="num_beams"):
                kept.generate(ids(34, 1, 3), max_new_tokens=2, **repeat)
        pressed = slerpmerge.prefill(model, context, reselect=True)
        layer = pressed.cache.layers[0]
        layer.keys, layer.values = layer.keys[:, :, ::2], layer.values[:, :, ::2]  # what a press does
        with pytest.raises(ValueError, match="press"):
            pressed.generate(ids(34, 1, 3))
        assert kept.generate(ids(34, 1, 3), max_new_tokens=1).shape == (1, 34)  # the others still answer
    with pytest.raises(ValueError, match="no longer patched"):
        kept.generate(ids(34, 1, 3))
    with slerpmerge.merging(model, **dict(GUIDED, target=0.25)), pytest.raises(ValueError, match="no longer patched"):
        kept.generate(ids(34, 1, 3))
