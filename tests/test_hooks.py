import pytest
import torch
from tiny import ARCHITECTURES, tiny_model

import slerpmerge
from slerpmerge.plan import plan_merge

TOL = 1e-5


def ids_and_mask(lengths, seq=None, vocab=128, seed=0):
    """Left-padded random prompts."""
    g = torch.Generator().manual_seed(seed)
    seq = seq or max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), seq), generator=g)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, seq - n:] = 1
    return ids.masked_fill(mask == 0, 0), mask


def hooks_of(model):
    return [(name, len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return tiny_model(request.param)


@torch.no_grad()
def test_short_sequences_are_untouched(model):
    for n in (1, 2):
        ids = torch.randint(3, 128, (2, n))
        base = model(ids).logits
        with slerpmerge.merging(model, layer_cutoff=1):
            merged = model(ids).logits
        torch.testing.assert_close(merged, base, atol=TOL, rtol=TOL)


@torch.no_grad()
def test_cutoff_at_last_layer_keeps_last_logits(model):
    ids, mask = ids_and_mask([21, 16, 9])
    base = model(ids, attention_mask=mask).logits
    with slerpmerge.merging(model, layer_cutoff=model.config.num_hidden_layers - 1):
        merged = model(ids, attention_mask=mask).logits
    assert merged.shape[1] == plan_merge(mask).length < ids.shape[1]
    torch.testing.assert_close(merged[:, -1], base[:, -1], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("positions", ["original", "reindex"])
@torch.no_grad()
def test_keeping_everything_reproduces_the_model(model, positions):
    """All tokens kept: the later layers run on rebuilt masks and rotary embeddings, which must be the model's."""
    ids, mask = ids_and_mask([24, 17, 5])
    base = model(ids, attention_mask=mask).logits
    with slerpmerge.merging(model, layer_cutoff=0, keep_start=24, positions=positions):
        merged = model(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(merged[real], base[real], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("positions", ["original", "reindex"])
@pytest.mark.parametrize("variant", [dict(method="slerp"), dict(method="mean"), dict(method="drop"),
                                     dict(layer_cutoff=[0, 2]), dict(ratio=0.4), dict(similarity=0.2)],
                         ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
@torch.no_grad()
def test_padded_rows_equal_rows_alone(model, positions, variant):
    lengths = [23, 18, 7, 3]
    ids, mask = ids_and_mask(lengths)
    with slerpmerge.merging(model, **{"layer_cutoff": 1, **variant}, keep_end=2, positions=positions):
        batch = model(ids, attention_mask=mask).logits
        for row, n in enumerate(lengths):
            alone = model(ids[row:row + 1, -n:]).logits[0]
            got = batch[row, batch.shape[1] - alone.shape[0]:]
            torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_merging_changes_the_output_and_positions_matter(model):
    ids, _ = ids_and_mask([30])
    base = model(ids).logits[:, -1]
    outs = {}
    for positions in ("original", "reindex"):
        with slerpmerge.merging(model, layer_cutoff=0, positions=positions):
            outs[positions] = model(ids).logits
    assert outs["original"].shape == (1, 16, base.shape[-1])
    assert not torch.allclose(outs["original"][:, -1], base, atol=1e-3)
    assert not torch.allclose(outs["original"], outs["reindex"], atol=1e-4)


@torch.no_grad()
def test_unpatch_restores_the_model_exactly(model):
    ids, mask = ids_and_mask([12, 9])
    before_hooks = hooks_of(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    base = model(ids, attention_mask=mask).logits
    slerpmerge.patch(model, layer_cutoff=1, cache="recompute")
    assert slerpmerge.settings_of(model).layer_cutoff == 1
    assert model.generation_config.use_cache is False
    model(ids, attention_mask=mask)
    slerpmerge.unpatch(model)
    assert slerpmerge.settings_of(model) is None
    assert hooks_of(model) == before_hooks
    assert model.generation_config.use_cache is True
    assert torch.equal(model(ids, attention_mask=mask).logits, base)
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())


def test_merging_unpatches_on_error(model):
    with pytest.raises(RuntimeError, match="boom"):
        with slerpmerge.merging(model, layer_cutoff=1):
            raise RuntimeError("boom")
    assert slerpmerge.settings_of(model) is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer_cutoff=4), r"0\.\.3 \(this model has 4 layers\)"),
    (dict(layer_cutoff=-1), "layer_cutoff"),
    (dict(layer_cutoff=1.5), "integer"),
    (dict(layer_cutoff=1, keep_start=-2), "keep_start"),
    (dict(layer_cutoff=1, keep_end=None), "keep_end"),
    (dict(layer_cutoff=1, method="avg"), "slerp, mean, drop"),
    (dict(layer_cutoff=1, positions="middle"), "original, reindex"),
    (dict(layer_cutoff=1, cache="none"), "merged, recompute"),
    (dict(layer_cutoff=[2, 1]), "strictly increasing"),
    (dict(layer_cutoff=[1, 9]), r"0\.\.3"),
    (dict(layer_cutoff=1, similarity=0.5, ratio=0.5), "not both"),
    (dict(layer_cutoff=1, ratio=1.5), r"in \[0, 1\]"),
])
def test_bad_arguments_say_what_is_accepted(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        slerpmerge.patch(model, **kwargs)
    assert slerpmerge.settings_of(model) is None


def test_patching_twice_and_unpatching_nothing(model):
    with slerpmerge.merging(model, layer_cutoff=1):
        with pytest.raises(ValueError, match="already patched"):
            slerpmerge.patch(model, layer_cutoff=2)
    with pytest.raises(ValueError, match="not patched"):
        slerpmerge.unpatch(model)


@torch.no_grad()
def test_labels_and_prepared_masks_are_refused(model):
    ids, mask = ids_and_mask([10])
    with slerpmerge.merging(model, layer_cutoff=1):
        with pytest.raises(ValueError, match="labels"):
            model(ids, labels=ids)
        with pytest.raises(ValueError, match="2D"):
            model(ids, attention_mask=mask[:, None, None, :].float())


def test_unsupported_models_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="cannot drive model type 'gpt2'.*supported: llama"):
        slerpmerge.patch(gpt2, layer_cutoff=0)
    eager_only = tiny_model("llama", attn="eager")
    eager_only.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attention implementation"):
        slerpmerge.patch(eager_only, layer_cutoff=0)


@torch.no_grad()
def test_eager_and_sdpa_agree():
    ids, mask = ids_and_mask([20, 11])
    outs = []
    for attn in ("eager", "sdpa"):
        m = tiny_model("gemma3", attn=attn)
        with slerpmerge.merging(m, layer_cutoff=1):
            outs.append(m(ids, attention_mask=mask).logits[mask.new_ones(1).bool().expand(2)][:, -1])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_half_precision_stays_finite():
    m = tiny_model("llama", dtype=torch.bfloat16)
    ids, mask = ids_and_mask([40, 33])
    with slerpmerge.merging(m, layer_cutoff=0):
        out = m(ids, attention_mask=mask).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def _saved_with_tokenizer(tmp_path, adds_bos: bool):
    """A tiny Llama saved beside a tokenizer that does (or does not) begin every text with <s> (id 1)."""
    from tiny import tiny_tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    if adds_bos:
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tiny_model().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("adds_bos", [True, False])
def test_a_prompt_without_the_tokenizers_bos_is_warned_about_once(tmp_path, adds_bos):
    import warnings

    model = _saved_with_tokenizer(tmp_path, adds_bos)
    slerpmerge.patch(model, layer_cutoff=1, method="slerp", keep_start=1)
    with_bos = torch.tensor([[0, 0, 1, *range(3, 40)], [1, *range(3, 42)]])
    mask = (with_bos != 0).long()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(with_bos, attention_mask=mask)  # left-padded rows that begin with <s> after their padding
    without = torch.tensor([list(range(3, 43))])
    if adds_bos:
        with pytest.warns(UserWarning, match=r"beginning-of-sequence token \(id 1\)"):
            model(without)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(without)  # once per patch, and never where the tokenizer adds no <s>


@torch.no_grad()
def test_inputs_embeds_answer_as_their_ids():
    model = tiny_model("llama")
    ids, mask = ids_and_mask([30, 21])
    with slerpmerge.merging(model, layer_cutoff=1, method="prune", target=0.5, keep_start=1, keep_end=2):
        want = model(ids, attention_mask=mask).logits
        got = model(inputs_embeds=model.model.embed_tokens(ids), attention_mask=mask).logits
    torch.testing.assert_close(got, want)
