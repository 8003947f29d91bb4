"""The prompt shapes: how an item is split or wrapped, and how a setting answers in each, against the base model
reading the whole prompt."""

import pytest
import torch
from tiny import tiny_model

from slerpmerge.evaluate.corpus import default_texts, token_stream
from slerpmerge.evaluate.runs import truncate
from slerpmerge.evaluate.shapes import answer, shaped
from slerpmerge.evaluate.sweep import sweep
from slerpmerge.evaluate.tasks import TASKS

BASE = {"method": "base"}


def whole(model, ids, new_tokens=5):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_end_and_later_split_the_item_at_its_question(smollm2):
    _, tokenizer = smollm2
    item = TASKS["once"](tokenizer, token_stream(tokenizer, default_texts()[:40]), 300, 1)[0]
    for shape in ("end", "later"):
        context, question = shaped(tokenizer, item, shape)
        assert torch.equal(torch.cat([context, question], 1), item.ids)
        assert tokenizer.decode(question[0]) == "\nWhat is the pass key? The pass key is"


def test_chat_puts_the_document_and_question_in_a_user_turn(smollm2, gemma3):
    _, tokenizer = smollm2
    item = TASKS["word"](tokenizer, token_stream(tokenizer, default_texts()[:40]), 300, 1)[0]
    context, question = shaped(tokenizer, item, "chat")
    text = tokenizer.decode(torch.cat([context, question], 1)[0])
    body = tokenizer.decode(item.context[0])
    user = text.index("<|im_start|>user\n")
    assert text.index(body) == user + len("<|im_start|>user\n")
    assert text.endswith(body + "\nWhat is the secret word?<|im_end|>\n<|im_start|>assistant\nThe secret word is")
    _, gemma_tokenizer = gemma3
    gemma_item = TASKS["once"](gemma_tokenizer, token_stream(gemma_tokenizer, default_texts()[:40]), 300, 1)[0]
    with pytest.raises(ValueError, match="the chat shape needs a chat template"):
        shaped(gemma_tokenizer, gemma_item, "chat")
    with pytest.raises(ValueError, match="shape must be one of end, chat, later, reselect"):
        shaped(tokenizer, item, "first")


@torch.no_grad()
def test_later_answers_as_the_whole_prompt_when_nothing_is_shortened():
    """The base model, a truncation that keeps everything and a patch whose ends hold every token each answer the
    question after the context exactly as the base model reading the whole prompt."""
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    context, question = ids[:, :33], ids[:, 33:]
    want = whole(model, ids)
    for setting in (BASE, dict(method="truncate", target=1.0),
                    dict(method="guided", layer_cutoff=1, keep_start=4, keep_end=40, target=0.5)):
        for shape in ("later", "reselect"):
            got, seen = answer(model, context, question, setting, shape, 5, 0)
            assert got == want and seen == 33, (setting, shape)


@torch.no_grad()
def test_later_shortens_the_context_alone():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 48), generator=torch.Generator().manual_seed(4))
    context, question = ids[:, :40], ids[:, 40:]
    got, seen = answer(model, context, question, dict(method="truncate", target=0.5, keep_start=2), "later", 5, 0)
    short = truncate(context, 0.5, 2)
    assert seen == 20 and got == whole(model, torch.cat([short, question], 1))
    # a scored merge of the context alone keeps its target of the context; at the end of the prompt, of the whole
    setting = dict(method="prune", layer_cutoff=1, target=0.5, keep_start=2, keep_end=4)
    later, seen_later = answer(model, context, question, setting, "later", 5, 0)
    end, seen_end = answer(model, context, question, setting, "end", 5, 0)
    assert (seen_later, seen_end) == (20, 24)
    assert len(later) == len(end) == 5


def test_sweep_writes_a_kind_per_shape(smollm2, tmp_path):
    model, tokenizer = smollm2
    settings = [dict(method="prune", layer_cutoff=20, target=0.5, keep_end=8)]
    rows = sweep("smollm2-135m", model, tokenizer, default_texts()[:60], tmp_path, settings, tasks=["once"],
                 task_lengths=[160], task_items=2, shapes=("end", "chat", "later")).rows
    assert sorted({r["kind"] for r in rows}) == ["once", "once:chat", "once:later"]
    assert len(rows) == 3 * 2 * 2
    later = [r for r in rows if r["kind"] == "once:later" and r["method"] == "prune"]
    end = [r for r in rows if r["kind"] == "once" and r["method"] == "prune"]
    assert all(a["merged_length"] < b["merged_length"] for a, b in zip(later, end))  # the question is not merged


@torch.no_grad()
def test_reselect_lets_the_question_choose_the_context_tokens():
    """Asked later with reselection, the question ranks the context at the cutoff: the answer is the one-prompt
    answer of the same tokens (`test_context` checks that reference), and not the answer of a context shortened
    before its question."""
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 48), generator=torch.Generator().manual_seed(5))
    context, question = ids[:, :40], ids[:, 40:]
    setting = dict(method="prune", layer_cutoff=1, target=0.5, keep_start=2, window=4)
    later, seen_later = answer(model, context, question, setting, "later", 5, 0)
    chosen, seen_chosen = answer(model, context, question, setting, "reselect", 5, 0)
    assert seen_later == seen_chosen == 20  # half the context either way; the question whole
    assert len(chosen) == 5 and chosen != later
