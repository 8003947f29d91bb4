"""Generation with the merged KV cache, on tiny models of every architecture."""

import copy
import dataclasses

import pytest
import torch
from test_hooks import ids_and_mask
from tiny import ARCHITECTURES, tiny_model
from transformers import DynamicCache

import slerpmerge
from slerpmerge.compat import cache_kwargs, generated_cache
from slerpmerge.plan import plan_merge


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return tiny_model(request.param)


def positions_of(mask):
    return (mask.cumsum(1) - 1).clamp(min=0)


VARIANTS = [
    dict(positions="original"),
    dict(positions="reindex"),
    dict(positions="original", layer_cutoff=[0, 2]),  # two stages
    dict(positions="reindex", layer_cutoff=[0, 2]),
    dict(positions="original", ratio=0.5),
    dict(positions="original", similarity=0.0),
]


# Padded rows; one row (decode steps keep the decoder's own masks); one row shorter than the sliding windows.
LENGTHS = {"padded": [22, 15, 9], "one-row": [22], "short": [6]}


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
@torch.no_grad()
def test_cached_decoding_equals_merging_the_whole_sequence(model, variant, lengths):
    """Step k with the merged cache must equal one forward over prompt + k tokens that keeps those k unmerged."""
    variant = {"layer_cutoff": 1, **variant}
    steps = 4
    ids, mask = ids_and_mask(lengths)
    new = torch.randint(3, 128, (len(lengths), steps), generator=torch.Generator().manual_seed(5))
    reference = copy.deepcopy(model)
    with slerpmerge.merging(model, keep_start=1, **variant):
        cache = DynamicCache(config=model.config)
        model(ids, attention_mask=mask, position_ids=positions_of(mask), **cache_kwargs(model, cache), use_cache=True)
        for k in range(steps):
            full_mask = torch.cat([mask, torch.ones(len(lengths), k + 1, dtype=torch.long)], 1)
            step = model(new[:, k:k + 1], attention_mask=full_mask, position_ids=positions_of(full_mask)[:, -1:],
                         **cache_kwargs(model, cache), use_cache=True).logits
            with slerpmerge.merging(reference, keep_start=1, keep_end=k + 1, **variant):
                whole = reference(torch.cat([ids, new[:, :k + 1]], 1), attention_mask=full_mask,
                                  position_ids=positions_of(full_mask)).logits
            torch.testing.assert_close(step[:, -1], whole[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@torch.no_grad()
def test_unpadded_decode_steps_build_no_masks_under_sdpa(monkeypatch, attn):
    """With no padding and no position shift a decode step keeps the decoder's own masks and rotary under SDPA
    (which needs no mask for one query); eager attention needs its mask sized to the shorter cache."""
    model = tiny_model("llama", attn=attn)
    built = []
    for name, fn in slerpmerge.compat.MASK_FUNCTIONS.items():
        monkeypatch.setitem(slerpmerge.compat.MASK_FUNCTIONS, name,
                            lambda *a, fn=fn, **k: built.append(1) or fn(*a, **k))
    ids = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    with slerpmerge.merging(model, layer_cutoff=1):
        cache = DynamicCache(config=model.config)
        out = model(ids, **cache_kwargs(model, cache), use_cache=True)
        prefill_builds = len(built)
        model(out.logits[:, -1:].argmax(-1), attention_mask=torch.ones(1, 21, dtype=torch.long),
              **cache_kwargs(model, cache), use_cache=True)
    assert prefill_builds == 1
    assert len(built) - prefill_builds == (0 if attn == "sdpa" else 1)


@torch.no_grad()
def test_cache_holds_full_prompt_before_and_merged_prompt_after_the_cutoff(model):
    ids, mask = ids_and_mask([30, 19])
    cutoff, new = 1, 6
    merged_len = plan_merge(mask).length
    with slerpmerge.merging(model, layer_cutoff=cutoff):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             return_dict_in_generate=True)
    cache = generated_cache(out)
    for i, layer in enumerate(cache.layers):
        seen = ids.shape[1] if i <= cutoff else merged_len
        assert layer.get_seq_length() == seen + new - 1, i  # the last new token is never fed back
        if not layer.is_sliding:
            assert layer.keys.shape[-2] == seen + new - 1


@torch.no_grad()
def test_every_stage_caches_its_own_length(model):
    ids, _ = ids_and_mask([40])
    new = 3
    with slerpmerge.merging(model, layer_cutoff=[0, 2]):
        out = model.generate(ids, max_new_tokens=new, do_sample=False, return_dict_in_generate=True)
    once = plan_merge(torch.ones(1, 40, dtype=torch.bool)).length
    twice = plan_merge(torch.ones(1, once, dtype=torch.bool)).length
    seen = [40, once, once, twice]
    assert [layer.get_seq_length() for layer in generated_cache(out).layers] == [n + new - 1 for n in seen]


@torch.no_grad()
def test_similar_pairs_only(model):
    ids, _ = ids_and_mask([41])
    with slerpmerge.merging(model, layer_cutoff=1, similarity=1.0):  # nothing is that similar: nothing merges
        assert model(ids).logits.shape[1] == 41
    with slerpmerge.merging(model, layer_cutoff=1, ratio=0.5):
        assert model(ids).logits.shape[1] == 41 - 10  # half of the 19 pairs, rounded up
        assert slerpmerge.patching.merged_lengths(model) == [31]


@torch.no_grad()
def test_cutoff_at_last_layer_generates_like_the_base_model(model):
    ids, mask = ids_and_mask([25, 12])
    base = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    with slerpmerge.merging(model, layer_cutoff=model.config.num_hidden_layers - 1):
        merged = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(merged, base)


@torch.no_grad()
def test_batch_rows_generate_like_prompts_alone(model):
    lengths = [26, 17, 6]
    ids, mask = ids_and_mask(lengths)
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=2):
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        for row, n in enumerate(lengths):
            alone = model.generate(ids[row:row + 1, -n:], max_new_tokens=6, do_sample=False)
            assert torch.equal(batch[row, -6:], alone[0, -6:]), row


@torch.no_grad()
def test_recompute_mode_remerges_the_whole_sequence_every_step(model):
    ids, _ = ids_and_mask([18])
    with slerpmerge.merging(model, layer_cutoff=1, cache="recompute"):
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
        seq = ids
        for _ in range(5):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@torch.no_grad()
def test_short_prompts_and_no_new_tokens_behave_like_the_base_model(model):
    for n in (1, 2):
        ids = torch.randint(3, 128, (1, n))
        base = model.generate(ids, max_new_tokens=6, do_sample=False)
        with slerpmerge.merging(model, layer_cutoff=1):
            assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), base)
    ids, _ = ids_and_mask([20])
    base_empty = model.generate(max_new_tokens=4, do_sample=False)  # no prompt: starts from BOS
    with pytest.raises(ValueError, match="max_new_tokens") as base_error:
        model.generate(ids, max_new_tokens=0)
    with slerpmerge.merging(model, layer_cutoff=1):
        with pytest.raises(ValueError, match="max_new_tokens") as merged_error:
            model.generate(ids, max_new_tokens=0)
        assert str(merged_error.value) == str(base_error.value)
        assert torch.equal(model.generate(max_new_tokens=4, do_sample=False), base_empty)


@torch.no_grad()
def test_sampling_with_a_seed_and_beam_search(model):
    ids, mask = ids_and_mask([24, 14])
    with slerpmerge.merging(model, layer_cutoff=1):
        runs = []
        for _ in range(2):
            torch.manual_seed(7)
            runs.append(model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=20))
        assert torch.equal(runs[0], runs[1])
        beams = model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False,
                               num_return_sequences=2)
        assert beams.shape == (4, ids.shape[1] + 5)


@torch.no_grad()
def test_a_foreign_cache_is_refused(model):
    ids, _ = ids_and_mask([12])
    cache = DynamicCache(config=model.config)
    model(ids, **cache_kwargs(model, cache), use_cache=True)  # filled unpatched
    with slerpmerge.merging(model, layer_cutoff=1):
        with pytest.raises(RuntimeError, match="merged prefill"):
            model(ids[:, :1], **cache_kwargs(model, cache), use_cache=True)


# -- through the public path: generate, pipelines and sampling on padded batches --------------------------------

PUBLIC_VARIANTS = [dict(), dict(positions="reindex"), dict(layer_cutoff=[0, 2], keep_end=2)]


def two_rows(seed=0):
    """One unpadded row of 30 tokens and one of 21 left-padded to 30, as a tokenizer pads for generation."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(3, 128, (30,), generator=g), torch.randint(3, 128, (21,), generator=g)
    ids = torch.stack([a, torch.cat([torch.zeros(9, dtype=torch.long), b])])
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    return ids, mask, [a[None], b[None]]


@pytest.mark.parametrize("variant", PUBLIC_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) or "default")
@torch.no_grad()
def test_generate_on_a_padded_batch_equals_each_prompt_alone(model, variant):
    ids, mask, alone = two_rows()
    with slerpmerge.merging(model, **{"layer_cutoff": 1, **variant}):
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        for row, prompt in enumerate(alone):
            single = model.generate(prompt, max_new_tokens=12, do_sample=False)
            assert torch.equal(batch[row, -12:], single[0, -12:]), row
    base = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert not torch.equal(base, batch)  # the merge did change the answer: the rows were not compared with base


@torch.no_grad()
def test_pipeline_batch_equals_each_prompt_alone(model):
    from tiny import tiny_tokenizer, words
    from transformers import pipeline

    _, _, alone = two_rows(seed=1)
    prompts = [words(p[0]) for p in alone]
    tokenizer = tiny_tokenizer()
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=2):
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        kwargs = dict(max_new_tokens=10, do_sample=False, return_full_text=False)
        together = pipe(prompts, batch_size=2, **kwargs)
        singles = [pipe(p, **kwargs) for p in prompts]
    assert [t[0]["generated_text"] for t in together] == [s[0]["generated_text"] for s in singles]
    assert all(s[0]["generated_text"].strip() for s in singles)


@torch.no_grad()
def test_sampling_a_padded_batch_draws_from_each_prompt_alone(model):
    """Sampled rows share one random stream, so their tokens differ from a prompt sampled alone; what must hold is
    that every step's distribution, given the tokens drawn so far, is the one the prompt alone gives."""
    ids, mask, alone = two_rows(seed=2)
    steps = 8
    with slerpmerge.merging(model, layer_cutoff=1, keep_end=2):
        torch.manual_seed(7)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=True, top_k=50,
                             output_logits=True, return_dict_in_generate=True)
        torch.manual_seed(7)
        again = model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=True, top_k=50)
        assert torch.equal(out.sequences, again)
        drawn = out.sequences[:, -steps:]
        for row, prompt in enumerate(alone):
            cache = DynamicCache(config=model.config)
            logits = model(prompt, **cache_kwargs(model, cache), use_cache=True).logits[0, -1]
            for k in range(steps):
                torch.testing.assert_close(out.logits[k][row], logits, atol=1e-4, rtol=1e-4)
                logits = model(drawn[row:row + 1, k:k + 1], **cache_kwargs(model, cache), use_cache=True).logits[0, -1]


@torch.no_grad()
def test_right_padding_gives_right_rows_or_a_clear_error(model):
    ids, mask, alone = two_rows(seed=3)
    right_ids = torch.stack([ids[0], torch.cat([alone[1][0], torch.zeros(9, dtype=torch.long)])])
    right_mask = mask.flip(1)
    with slerpmerge.merging(model, layer_cutoff=1):
        logits = model(right_ids, attention_mask=right_mask).logits  # a plain forward: rows as if alone
        single = model(alone[1]).logits[0]
        torch.testing.assert_close(logits[1, :single.shape[0]], single, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="padding_side = 'left'"):
            model.generate(right_ids, attention_mask=right_mask, max_new_tokens=4, do_sample=False)


@torch.no_grad()
def test_a_renamed_cache_argument_fails_loudly(model, monkeypatch):
    """As if transformers renamed the cache argument again: the hooks must say so, not take decode steps for
    prefills."""
    import transformers

    ids, mask, _ = two_rows()
    with slerpmerge.merging(model, layer_cutoff=1):
        monkeypatch.setattr(model._slerpmerge, "api", dataclasses.replace(model._slerpmerge.api, cache_arg="kv"))
        with pytest.raises(RuntimeError, match=rf"arrived as '\w+', where slerpmerge reads 'kv'.*transformers "
                                               rf"{transformers.__version__}"):
            model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)


def test_a_decode_step_without_its_cache_fails_loudly(model):
    ids, mask, _ = two_rows()
    with slerpmerge.merging(model, layer_cutoff=1, cache="recompute"):
        with pytest.raises(RuntimeError, match=r"decode step arrived.*mask over 31 tokens for 1 new"):
            model(ids[:, :1], attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1))


def test_the_adapter_refuses_a_decoder_with_no_known_cache_argument():
    from slerpmerge.compat import Api, UnknownTransformers

    class Decoder(torch.nn.Module):
        def forward(self, input_ids, kv_state=None):
            return input_ids

    with pytest.raises(UnknownTransformers, match="Decoder.forward takes the cache under none of the names"):
        Api.of(Decoder())


def test_same_prefix_counts_tokens_before_the_first_difference():
    from slerpmerge.generate import same_prefix

    assert same_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert same_prefix([1, 2, 3, 4], [1, 9, 3, 4]) == 1  # equal again later: after a difference it counts nothing
    assert same_prefix([1, 2], [1, 2, 3]) == 2 and same_prefix([], [1]) == 0
