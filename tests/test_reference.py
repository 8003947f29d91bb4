"""The patched model against an independent reference (tests/reference.py): the tiny Llama and Gemma 3 written
out from their weights in float64, merged with the article's rule one token at a time, decoded step by step
against per-layer caches. Prefill logits and every greedy decode step must match to 1e-5."""

import pytest
import torch
from reference import Reference, merged_generation
from test_hooks import ids_and_mask
from tiny import tiny_model

import slerpmerge

ATOL = 1e-5


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@torch.no_grad()
def test_the_reference_is_the_unpatched_model(arch):
    model = tiny_model(arch)
    ids, _ = ids_and_mask([30])
    out = model.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    prefill, steps = merged_generation(Reference(model), ids[0].tolist(), [], 0, 0, "original", 3)
    torch.testing.assert_close(model(ids).logits[0].double(), prefill, atol=ATOL, rtol=0)
    for k, want in enumerate([prefill[-1], *steps]):
        torch.testing.assert_close(out.logits[k][0].double(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("positions", ["original", "reindex"])
@pytest.mark.parametrize("cutoffs,keeps", [([1], (0, 0)), ([1], (2, 3)), ([0, 2], (1, 2))],
                         ids=["one-stage", "keeps", "two-stages"])
@torch.no_grad()
def test_the_patched_model_equals_the_reference(arch, positions, cutoffs, keeps):
    """A left-padded batch of two prompts (30 and 21 tokens; Gemma 3's sliding window is 8): each row's prefill
    logits at its merged positions and its 5 greedy tokens with their logits equal the reference's for it alone."""
    model = tiny_model(arch)
    ref = Reference(model)
    lengths, new = [30, 21], 5
    ids, mask = ids_and_mask(lengths)
    with slerpmerge.merging(model, layer_cutoff=cutoffs, keep_start=keeps[0], keep_end=keeps[1],
                            positions=positions):
        prefill = model(ids, attention_mask=mask).logits
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    for row, n in enumerate(lengths):
        want_prefill, want_steps = merged_generation(ref, ids[row, -n:].tolist(), cutoffs, *keeps, positions, new - 1)
        assert want_prefill.shape[0] < n  # the reference did merge
        torch.testing.assert_close(prefill[row, -want_prefill.shape[0]:].double(), want_prefill, atol=ATOL, rtol=0)
        for k, want in enumerate([want_prefill[-1], *want_steps]):
            torch.testing.assert_close(out.logits[k][row].double(), want, atol=ATOL, rtol=0)
            assert int(out.sequences[row, ids.shape[1] + k]) == int(want.argmax())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("length", [9, 40])
@torch.no_grad()
def test_an_unpadded_prompt_slides_over_true_positions_as_the_reference(attn, length):
    """One unpadded prompt on Gemma 3 (window 8). At 9 tokens the merged prompt is shorter than the window, so SDPA
    gets no mask for it; the sliding layers after the cutoff must still see only the entries within 8 positions."""
    model = tiny_model("gemma3", attn=attn)
    ids, _ = ids_and_mask([length])
    with slerpmerge.merging(model, layer_cutoff=[1], keep_start=1, keep_end=2):
        out = model.generate(ids, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    want_prefill, want_steps = merged_generation(Reference(model), ids[0].tolist(), [1], 1, 2, "original", 5)
    for k, want in enumerate([want_prefill[-1], *want_steps]):
        torch.testing.assert_close(out.logits[k][0].double(), want, atol=ATOL, rtol=0)
