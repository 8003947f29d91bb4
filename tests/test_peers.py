"""slerpmerge with a kvpress press on top: the press compresses the caches the merge leaves (the full-length
early layers and the merged later ones). Runs in the peers environment (`make peers`), where kvpress is."""

from pathlib import Path

import pytest
import torch
from kvpress import KnormPress
from tiny import tiny_model
from transformers import DynamicCache

import slerpmerge
from slerpmerge.compat import cache_kwargs, generated_cache
from slerpmerge.plan import plan_merge

# kvpress 0.5.5 fails on sliding-window caches with or without slerpmerge (the tiny Mistral and Qwen2 have them,
# Gemma 3's text model too; docs/how-it-works.md): the architectures whose layers all attend in full.
ARCHS = ("llama", "qwen3", "phi3")


def keep_smallest_keys(cache: DynamicCache, ratio: float) -> None:
    """The Knorm rule, written here: in every layer and key-value head keep the int(T · (1 - ratio)) keys of
    smallest L2 norm, with their values, in their order."""
    for layer in cache.layers:
        keys, values = layer.keys, layer.values  # (B, H_kv, T, d)
        kept = int(keys.shape[2] * (1 - ratio))
        order = keys.norm(dim=-1).argsort(dim=-1)[..., :kept].sort(dim=-1).values  # (B, H_kv, kept)
        index = order[..., None].expand(-1, -1, -1, keys.shape[-1])
        layer.keys, layer.values = keys.gather(2, index), values.gather(2, index)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_a_press_compresses_what_the_merge_leaves_and_generation_follows(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(0))
    ratio, new, cutoff = 0.5, 6, 1
    merged = plan_merge(torch.ones(1, 60, dtype=torch.bool), 0, 4).length
    with slerpmerge.merging(model, layer_cutoff=cutoff, keep_end=4), KnormPress(ratio)(model):
        out = model.generate(ids, max_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    sizes = [layer.keys.shape[2] for layer in generated_cache(out).layers]
    want = [int(60 * ratio) if i <= cutoff else int(merged * ratio) for i in range(len(sizes))]
    assert sizes == [w + new - 1 for w in want]  # compressed after the prefill; decode steps appended

    with slerpmerge.merging(model, layer_cutoff=cutoff, keep_end=4):  # the reference: merge, prune, decode
        cache = DynamicCache(config=model.config)
        logits = model(ids, **cache_kwargs(model, cache), use_cache=True).logits[0, -1]
        keep_smallest_keys(cache, ratio)
        tokens = [int(logits.argmax())]
        steps = [logits]
        for k in range(new - 1):  # true positions: a pressed cache is shorter than the tokens it has seen
            step = model(torch.tensor([[tokens[-1]]]), position_ids=torch.tensor([[60 + k]]),
                         **cache_kwargs(model, cache), use_cache=True)
            steps.append(step.logits[0, -1])
            tokens.append(int(steps[-1].argmax()))
    assert out.sequences[0, 60:].tolist() == tokens
    for got, ref in zip(out.logits, steps):
        torch.testing.assert_close(got[0], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_a_question_after_a_pressed_merged_context_equals_the_reference(attn):
    """kvpress's own protocol: a context prefilled under the press, then a several-token question at its true
    positions. Its mask must cover each stage's pressed cache, whatever length the press left."""
    model = tiny_model("llama", attn=attn)
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(2))
    context, question, positions = ids[:, :52], ids[:, 52:], torch.arange(52, 60)[None]
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=4):
        cache = DynamicCache(config=model.config)
        with KnormPress(0.5)(model):
            model(context, **cache_kwargs(model, cache), use_cache=True)
        got = model(question, position_ids=positions, **cache_kwargs(model, cache), use_cache=True).logits[0]
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=4):  # the reference: one question token at a time
        cache = DynamicCache(config=model.config)
        model(context, **cache_kwargs(model, cache), use_cache=True)
        keep_smallest_keys(cache, 0.5)
        want = [model(question[:, i:i + 1], position_ids=positions[:, i:i + 1], **cache_kwargs(model, cache),
                      use_cache=True).logits[0, -1] for i in range(question.shape[1])]
    torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_a_compressed_merged_padded_cache_is_refused():
    """With padding each stage's mask must say which cache entries are pads; after a press it is not known which
    are left, and slerpmerge says so rather than mask the wrong entries."""
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    with slerpmerge.merging(model, layer_cutoff=1), KnormPress(0.5)(model):
        with pytest.raises(ValueError, match="a KV-cache compression changed it"):
            model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)


@torch.no_grad()
def test_a_prefilled_context_under_a_press_is_refused():
    """`generate` counts the tokens a cache has seen by its length, so a pressed context would be continued at the
    wrong places: `Context.generate` says so (kvpress's own pipeline, or one-token steps at true positions as in
    the test above, continue it)."""
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(3))
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=4):
        with KnormPress(0.5)(model):
            kept = slerpmerge.prefill(model, ids[:, :52])
        with pytest.raises(ValueError, match="the context's cache was compressed after its prefill"):
            kept.generate(ids[:, 52:], max_new_tokens=4, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("shape", ["later", "end"])
@torch.no_grad()
def test_the_press_rows_of_docs_continue_a_pressed_context_at_true_positions(shape, monkeypatch):
    """results/shapes/asklater.py's answer under a press against the Knorm rule written here, then the rest one token at a
    time at true positions: `generate` would have fed the pressed-out tail of the context again."""
    root = Path(__file__).resolve().parents[1]
    for folder in ("kvpress", "shapes"):  # for this test only: the docs' scripts are no package
        monkeypatch.syspath_prepend(str(root / "results" / folder))
    from asklater import ANSWER_TOKENS, press_answer

    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(4))
    got = press_answer(model, ids[:, :52], ids[:, 52:], shape, "knorm", 0.5)
    pressed = 52 if shape == "later" else 59  # in `end` the whole prompt but its last token is pressed
    cache = DynamicCache(config=model.config)
    model(ids[:, :pressed], **cache_kwargs(model, cache), use_cache=True)
    keep_smallest_keys(cache, 0.5)
    feed, want = ids[0, pressed:].tolist(), []
    for i in range(60 - pressed + ANSWER_TOKENS - 1):
        token = feed[i] if i < len(feed) else want[-1]
        logits = model(torch.tensor([[token]]), position_ids=torch.tensor([[pressed + i]]),
                       **cache_kwargs(model, cache), use_cache=True).logits[0, -1]
        if i >= len(feed) - 1:
            want.append(int(logits.argmax()))
    assert got == want
