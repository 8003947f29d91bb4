"""Token scores: the attention probe against the attention weights the model's own eager attention returns."""

import pytest
import torch
from test_hooks import ids_and_mask
from tiny import ARCHITECTURES, tiny_model

from slerpmerge.architecture import layer_types
from slerpmerge.probe import AttentionProbe
from slerpmerge.score import attention_scores, last_real, neighbour_cosine


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("layer", [0, 1])
@torch.no_grad()
def test_probe_scores_equal_the_eager_attention_weights(arch, layer):
    """The last W queries' attention, averaged over queries and heads, as eager attention computes it: with left
    padding, sliding windows (mistral, qwen2 and gemma3 layer 0), q/k norms (qwen3, gemma3), a fused qkv (phi3)."""
    model = tiny_model(arch, attn="eager")
    lengths, window = [22, 15, 4], 6
    ids, mask = ids_and_mask(lengths)
    kind = layer_types(model.config)[layer]
    probe = AttentionProbe(model.model.layers[layer], model.config,
                           model.config.sliding_window if kind == "sliding_attention" else None)
    probe.armed = True
    weights = model(ids, attention_mask=mask, output_attentions=True).attentions[layer]  # (B, H, S, S)
    got = probe.scores(mask.bool(), window)
    for row, n in enumerate(lengths):
        w = min(window, n)
        want = weights[row, :, -w:, :].mean((0, 1))
        torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-4)
    heads = probe_heads = [1, 3]
    probe.armed = True
    model(ids, attention_mask=mask)
    torch.testing.assert_close(probe.scores(mask.bool(), window, probe_heads)[0],
                               weights[0, heads, -window:, :].mean((0, 1)), atol=1e-5, rtol=1e-4)
    probe.remove()


def test_attention_scores_by_hand():
    """Two keys, one query that sees both: the softmax of the scaled dot products, one head of each group."""
    q = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2 heads, 1 query, 2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1 kv head, 2 keys, 2)
    got = attention_scores(q, k, 1.0, torch.tensor([[1]]), torch.tensor([[True]]), torch.ones(1, 2, dtype=torch.bool))
    head0 = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    head1 = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    torch.testing.assert_close(got[0], (head0 + head1) / 2)
    windowed = attention_scores(q, k, 1.0, torch.tensor([[1]]), torch.tensor([[True]]),
                                torch.ones(1, 2, dtype=torch.bool), window=1)
    assert windowed[0].tolist() == [0.0, 1.0]  # a window of one: only itself


def test_last_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    index, valid = last_real(mask, 3)
    assert index.tolist() == [[2, 3, 4], [2, 3, 4], [0, 0, 1]]
    assert valid.tolist() == [[True, True, True], [True, True, True], [False, True, True]]


def test_neighbour_cosine():
    h = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    assert neighbour_cosine(h)[0].tolist() == [-2.0, 1.0, 0.0, 0.0]
