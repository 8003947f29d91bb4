"""The scorers against independent references: eager attention's own weights (heavy) and the key projection's own
output (keynorm), with left padding, sliding windows, q/k norms and a fused qkv; and a patched model that ranks by
each scorer keeps each padded row equal to that row alone."""

import pytest
import torch
from test_hooks import ids_and_mask
from tiny import ARCHITECTURES, begins, tiny_model, with_pieces

import slerpmerge
from slerpmerge.architecture import layer_types
from slerpmerge.merge import merge_sequence
from slerpmerge.probe import AttentionProbe, Scoring
from slerpmerge.score import Attended
from slerpmerge.scorers import SCORERS, expected, heavy, importance, last, mixed
from slerpmerge.settings import MergeSettings, check_options

LENGTHS = [22, 15, 4]


def probe_on(model, layer):
    kind = layer_types(model.config)[layer]
    return AttentionProbe(model.model.layers[layer], model.config,
                          model.config.sliding_window if kind == "sliding_attention" else None)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("layer", [0, 1])
@torch.no_grad()
def test_heavy_is_the_mean_attention_of_every_later_query(arch, layer):
    model = tiny_model(arch, attn="eager")
    ids, mask = ids_and_mask(LENGTHS)
    probe = probe_on(model, layer)
    probe.armed = True
    weights = model(ids, attention_mask=mask, output_attentions=True).attentions[layer]  # (B, H, S, S)
    got = heavy(probe.attended(mask.bool()), 0, chunk=5)  # chunks that split rows and padding
    probe.remove()
    seq = ids.shape[1]
    for row, n in enumerate(LENGTHS):
        for j in range(seq - n, seq):
            later = range(j, seq if probe.window is None else min(seq, j + probe.window))
            want = weights[row][:, list(later), j].mean(1)  # (H,)
            torch.testing.assert_close(got[row, :, j], want, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_keynorm_is_minus_the_norm_of_each_key(arch):
    model = tiny_model(arch)
    ids, mask = ids_and_mask(LENGTHS)
    attn = model.model.layers[1].self_attn
    caught = {}
    proj = getattr(attn, "k_proj", None) or attn.qkv_proj
    handle = proj.register_forward_hook(lambda m, a, out: caught.setdefault("k", out))
    probe = probe_on(model, 1)
    probe.armed = True
    model(ids, attention_mask=mask)
    handle.remove()
    got = SCORERS["keynorm"](probe.attended(mask.bool()), 0)  # (B, H, S)
    probe.remove()
    cfg, d = model.config, probe.head_dim
    k = caught["k"]
    if proj is not getattr(attn, "k_proj", None):  # fused: q, then k, then v
        k = k[..., cfg.num_attention_heads * d:(cfg.num_attention_heads + cfg.num_key_value_heads) * d]
    k = k.view(*k.shape[:2], cfg.num_key_value_heads, d)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    want = -k.norm(dim=-1).transpose(1, 2)  # (B, H_kv, S): rotary turns keys, keeps their norms
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    for h in range(cfg.num_attention_heads):
        torch.testing.assert_close(got[:, h], want[:, h // group], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_a_keys_only_probe_keeps_no_queries_and_ranks_as_a_full_one(arch):
    """Key norms read no queries, so a setting that ranks by them alone at a layer probes it without keeping them
    (an early probe would hold them until the cutoff); its keys and scores equal a full probe's."""
    model = tiny_model(arch)
    ids, mask = ids_and_mask(LENGTHS)
    kind = layer_types(model.config)[1]
    window = model.config.sliding_window if kind == "sliding_attention" else None
    full = AttentionProbe(model.model.layers[1], model.config, window)
    keys_only = AttentionProbe(model.model.layers[1], model.config, window, queries=False)
    full.armed = keys_only.armed = True
    model(ids, attention_mask=mask)
    fused = getattr(model.model.layers[1].self_attn, "qkv_proj", None) is not None
    assert fused or "q" not in keys_only.caught
    a, b = full.attended(mask.bool()), keys_only.attended(mask.bool())
    full.remove()
    keys_only.remove()
    assert b.queries is None and a.queries is not None and b.heads == a.heads
    torch.testing.assert_close(b.keys, a.keys)
    torch.testing.assert_close(importance(b, "keynorm", 3, [1], 1), importance(a, "keynorm", 3, [1], 1))

    settings = MergeSettings.make(layer_cutoff=2, method="prune", mix={"score": "keynorm", "layer": 0})
    scoring = Scoring(model.model.layers, model.config, settings, 2)
    assert {layer: p.queries for layer, p in scoring.probes.items()} == {2: True, 0: False}
    scoring.remove()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_expected_from_one_query_is_that_querys_attention(arch):
    """With one recent query there is no spread: the expectation is the attention that query pays (`last`), with
    left padding and sliding windows."""
    model = tiny_model(arch)
    ids, mask = ids_and_mask(LENGTHS)
    probe = probe_on(model, 0)
    probe.armed = True
    model(ids, attention_mask=mask)
    a = probe.attended(mask.bool())
    probe.remove()
    torch.testing.assert_close(expected(a, 1), last(a, 1), atol=1e-6, rtol=1e-5)
    wide = expected(a, 6)
    assert torch.isfinite(wide).all() and not torch.allclose(wide, last(a, 1))
    torch.testing.assert_close(wide.sum(-1), torch.ones_like(wide[..., 0]))


def test_expected_is_the_mean_attention_of_gaussian_queries():
    """Against sampling: queries drawn from a Gaussian, each key's mean exp(s q.k), normalised over the keys."""
    torch.manual_seed(0)
    d, n, scaling = 4, 200_000, 0.5
    mean, root = torch.randn(d) * 0.5, torch.randn(d, d) * 0.4
    queries = mean + torch.randn(n, d) @ root.T  # (n, d)
    probes = torch.randn(6, d)  # the keys asked about; the queries' own keys are far smaller, so count little
    keys = torch.cat([probes, torch.randn(n, d) * 1e-3])
    a = Attended(queries=torch.cat([torch.zeros(6, d), queries])[None, None], keys=keys[None, None],
                 mask=torch.ones(1, n + 6, dtype=torch.bool), scaling=scaling, window=None, softcap=None, heads=1)
    got = expected(a, n)[0, 0, :6]
    sampled = torch.exp(scaling * queries.double() @ probes.double().T).mean(0)  # (6,)
    torch.testing.assert_close((got / got[0]).double(), sampled / sampled[0], rtol=0.03, atol=0)


def test_importance_pools_the_chosen_heads_then_spreads():
    torch.manual_seed(0)
    a = type("A", (), {"mask": torch.ones(2, 9, dtype=torch.bool)})()
    per_head = torch.rand(2, 4, 9)
    SCORERS["fixed"] = lambda attended, window: per_head
    try:
        torch.testing.assert_close(importance(a, "fixed", 8, None, 0), per_head.mean(1))
        pooled = per_head[:, [1, 3]].mean(1)
        got = importance(a, "fixed", 8, [1, 3], 1)
        want = torch.stack([pooled[:, max(0, i - 1):i + 2].amax(1) for i in range(9)], 1)
        torch.testing.assert_close(got, want)
        a.mask[1, :3] = False  # padding lends its neighbours nothing, and keeps its own score
        per_head[1, :, :3] = 5.0
        got = importance(a, "fixed", 8, [1, 3], 1)
        want = torch.stack([pooled[1, max(3, i - 1):i + 2].amax() for i in range(3, 9)])
        torch.testing.assert_close(got[1, 3:], want)
        torch.testing.assert_close(got[1, :3], per_head[1, [1, 3], :3].mean(0))
    finally:
        del SCORERS["fixed"]


@pytest.mark.parametrize("score", [*SCORERS, "last+keynorm"])
@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3"])
@torch.no_grad()
def test_each_scorer_keeps_padded_rows_equal_to_rows_alone(arch, score):
    model = tiny_model(arch)
    lengths = [23, 18, 7]
    ids, mask = ids_and_mask(lengths)
    score, _, second = score.partition("+")
    mix = {"score": second, "layer": 0} if second else None
    with slerpmerge.merging(model, layer_cutoff=1, method="guided", score=score, mix=mix, keep_start=1, keep_end=2,
                            target=0.4, spread=1, chunk=3):  # chunks counted from each row's own start
        batch = model(ids, attention_mask=mask).logits
        for row, n in enumerate(lengths):
            alone = model(ids[row:row + 1, -n:]).logits[0]
            torch.testing.assert_close(batch[row, batch.shape[1] - alone.shape[0]:], alone, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_scorers_choose_different_tokens():
    """The setting reaches the probe: the same prompt gives other logits under another scorer."""
    model = tiny_model("llama")
    ids, _ = ids_and_mask([40])
    out = {}
    for score in SCORERS:
        with slerpmerge.merging(model, layer_cutoff=1, method="prune", score=score, target=0.3, window=4):
            out[score] = model(ids).logits[0, -1]
    assert not torch.allclose(out["last"], out["heavy"]) and not torch.allclose(out["last"], out["keynorm"])


def test_bad_scores_are_refused():
    assert check_options("guided", {})["score"] == "last"
    with pytest.raises(ValueError, match="score must be one of last, heavy, keynorm, expected; got 'question'"):
        check_options("guided", {"score": "question"})
    with pytest.raises(ValueError, match="score applies to method guided, guided-mean, prune, not slerp"):
        check_options("slerp", {"score": "heavy"})


def cutoff_output(model, layer: int, ids, mask):
    """(B, S, D) what the unpatched model's ``layer`` outputs on the prompt (the merge's input at that cutoff)."""
    caught = []
    handle = model.model.layers[layer].register_forward_hook(lambda m, a, out: caught.append(out))
    model(ids, attention_mask=mask)
    handle.remove()
    return caught[0][0] if isinstance(caught[0], tuple) else caught[0]


@torch.no_grad()
def test_score_layer_ranks_at_an_earlier_layer():
    """The tokens that go on past the cutoff are those a probe at the score layer ranks best: the merge of the
    unpatched model's cutoff output by that probe's scores."""
    model = tiny_model("llama")
    ids, mask = ids_and_mask([30, 21])
    common = dict(method="prune", score="keynorm", target=0.4, keep_start=1, keep_end=2)
    with slerpmerge.merging(model, layer_cutoff=2, **common):
        at_cutoff = model(ids, attention_mask=mask).logits
    with slerpmerge.merging(model, layer_cutoff=2, score_layer=2, **common):
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, at_cutoff)

    probe = probe_on(model, 0)
    probe.armed = True
    h = cutoff_output(model, 2, ids, mask)
    scores = importance(probe.attended(mask.bool()), "keynorm", 8, None, 0)
    probe.remove()
    want = merge_sequence(h, mask, 1, 2, "prune", scores=scores, target=0.4).hidden_states

    caught = {}
    handle = model.model.layers[3].register_forward_pre_hook(lambda m, a: caught.__setitem__("short", a[0]))
    with slerpmerge.merging(model, layer_cutoff=2, score_layer=0, **common):
        assert not torch.allclose(model(ids, attention_mask=mask).logits[:, -1], at_cutoff[:, -1])
    handle.remove()
    torch.testing.assert_close(caught["short"], want)
    for bad, match in ((dict(layer_cutoff=1, score_layer=2), "score_layer ranks tokens for one cutoff"),
                       (dict(layer_cutoff=[1, 2], score_layer=0), "score_layer ranks tokens for one cutoff"),
                       (dict(layer_cutoff=1, score_layer=-1), "score_layer is a layer index >= 0")):
        with pytest.raises(ValueError, match=match):
            slerpmerge.patch(model, **{**common, **bad})
    with pytest.raises(ValueError, match="score_layer applies to method guided, guided-mean, prune, not slerp"):
        slerpmerge.patch(model, layer_cutoff=1, score_layer=0)


def test_mixed_keeps_the_best_of_each_ranking():
    """Keeping the 2n best by `mixed` keeps the n best of each ranking, whatever the scales; padding comes last."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 20), torch.randn(3, 20) * 1000 + 50
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, :6] = False  # left padding
    a[1, :6] = b[1, :6] = 1e9  # the best of both, were they real
    got = mixed([a, b], mask)
    for row in range(3):
        real = mask[row].nonzero()[:, 0]
        for n in range(1, len(real) // 2 + 1):
            best = lambda s, k: set(real[s[row, real].topk(k).indices].tolist())  # noqa: E731
            assert best(a, n) | best(b, n) <= best(got, 2 * n)
        assert (got[row, ~mask[row]] < got[row, real].min()).all()
    c = torch.randn(3, 20)
    torch.testing.assert_close(mixed([c, c], None), mixed([c], None))  # agreeing rankings: the ranking itself
    assert (mixed([c], None).argsort(1, descending=True) == c.argsort(1, descending=True)).all()


@torch.no_grad()
def test_mix_ranks_by_both_layers():
    """A setting with a mix keeps the tokens `mixed` ranks best from the cutoff's last-query attention and layer 0's
    key norms, each from its own probe: the merge of the unpatched model's cutoff output by those scores."""
    model = tiny_model("llama")
    ids, mask = ids_and_mask([30, 21])
    common = dict(method="prune", target=0.4, keep_start=1, keep_end=2, window=3, spread=1, chunk=3)
    probes = {0: probe_on(model, 0), 2: probe_on(model, 2)}
    for probe in probes.values():
        probe.armed = True
    caught = {}
    handle = model.model.layers[2].register_forward_hook(lambda m, a, out: caught.setdefault("h", out))
    model(ids, attention_mask=mask)
    handle.remove()
    last = importance(probes[2].attended(mask.bool()), "last", 3, None, 1)
    norms = importance(probes[0].attended(mask.bool()), "keynorm", 3, [1], 1)
    for probe in probes.values():
        probe.remove()
    h = caught["h"][0] if isinstance(caught["h"], tuple) else caught["h"]
    both = mixed([last, norms], mask.bool())
    want = merge_sequence(h, mask, 1, 2, "prune", scores=both, target=0.4, chunk=3)
    alone = merge_sequence(h, mask, 1, 2, "prune", scores=last, target=0.4, chunk=3)
    assert not torch.equal(want.plan.first, alone.plan.first)  # the mix keeps other tokens
    unchunked = merge_sequence(h, mask, 1, 2, "prune", scores=both, target=0.4)
    assert not torch.equal(want.plan.first, unchunked.plan.first)  # and the chunks others again

    handle = model.model.layers[3].register_forward_pre_hook(lambda m, a: caught.__setitem__("short", a[0]))
    with slerpmerge.merging(model, layer_cutoff=2, mix={"score": "keynorm", "layer": 0, "heads": [1]}, **common):
        model(ids, attention_mask=mask)
    handle.remove()
    torch.testing.assert_close(caught["short"], want.hidden_states)


def test_bad_mixes_are_refused():
    model = tiny_model("llama")
    common = dict(layer_cutoff=1, method="guided")
    for bad, match in (({"score": "question"}, "mix is a second ranking"),
                       ({"score": "keynorm", "layers": 0}, "mix is a second ranking"),
                       ([("score", "keynorm")], "mix is a second ranking"),
                       ({"score": "keynorm", "layer": 2}, "mix ranks tokens for one cutoff, at a layer at or before"),
                       ({"score": "keynorm", "layer": -1}, "mix layer is a layer index >= 0"),
                       ({"score": "keynorm", "heads": [99]}, r"heads are query heads in 0\.\.3; got \[99\]")):
        with pytest.raises(ValueError, match=match):
            slerpmerge.patch(model, **common, mix=bad)
    with pytest.raises(ValueError, match="mix ranks tokens for one cutoff"):
        slerpmerge.patch(model, layer_cutoff=[0, 1], method="guided", mix={"score": "keynorm"})
    with pytest.raises(ValueError, match="mix applies to method guided, guided-mean, prune, not slerp"):
        slerpmerge.patch(model, layer_cutoff=1, mix={"score": "keynorm"})
    assert not hasattr(model, "_slerpmerge")


@torch.no_grad()
def test_runs_follow_the_tokenizers_words(tmp_path):
    """words=True: the tokens kept are those the merge keeps with the prompt's word starts, as the tokenizer saved
    beside the model spells its words; padded rows as rows alone."""
    model = with_pieces(tiny_model("llama"), tmp_path)
    ids, mask = ids_and_mask([40, 29])
    common = dict(method="prune", target=0.4, keep_start=1, keep_end=2, window=3, chunk=4)
    probe = probe_on(model, 2)
    probe.armed = True
    h = cutoff_output(model, 2, ids, mask)
    scores = importance(probe.attended(mask.bool()), "last", 3, None, 0)
    probe.remove()
    starts = torch.tensor([[begins(int(i)) for i in row] for row in ids])  # (B, S) from the vocabulary's rule
    want = merge_sequence(h, mask, 1, 2, "prune", scores=scores, target=0.4, chunk=4, word_starts=starts)
    fixed = merge_sequence(h, mask, 1, 2, "prune", scores=scores, target=0.4, chunk=4)
    assert not torch.equal(want.plan.first, fixed.plan.first)  # words make other runs than fixed ones

    caught = {}
    handle = model.model.layers[3].register_forward_pre_hook(lambda m, a: caught.__setitem__("short", a[0]))
    with slerpmerge.merging(model, layer_cutoff=2, words=True, **common):
        batch = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(caught["short"], want.hidden_states)
        for row, n in enumerate([40, 29]):
            alone = model(ids[row:row + 1, -n:]).logits[0]
            torch.testing.assert_close(batch[row, batch.shape[1] - alone.shape[0]:], alone, atol=1e-4, rtol=1e-4)
    handle.remove()


def test_words_need_a_tokenizer_and_token_ids(tmp_path):
    with pytest.raises(ValueError, match="words=True finds words with the model's tokenizer"):
        slerpmerge.patch(tiny_model("llama"), layer_cutoff=1, method="prune", chunk=4, words=True)
    with pytest.raises(ValueError, match="give chunk >= 2 with it"):
        slerpmerge.patch(tiny_model("llama"), layer_cutoff=1, method="prune", words=True)
    with pytest.raises(ValueError, match="words applies to method"):
        slerpmerge.patch(tiny_model("llama"), layer_cutoff=1, words=True)
    model = with_pieces(tiny_model("llama"), tmp_path)
    ids, _ = ids_and_mask([20])
    with slerpmerge.merging(model, layer_cutoff=1, method="prune", chunk=4, words=True):
        with pytest.raises(ValueError, match="pass input_ids, not inputs_embeds"):
            model(inputs_embeds=model.model.embed_tokens(ids))
