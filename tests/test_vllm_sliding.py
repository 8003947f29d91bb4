"""The vLLM plugin's windows for sliding layers after the cutoff, against a count over every entry by hand (the
engine-level agreement with the transformers path is in test_vllm_plugin.py)."""

import pytest
import torch

pytest.importorskip("vllm")  # run in the vLLM environment (make test-vllm)
from slerpmerge.vllm_plugin.sliding import check_impl, plan  # noqa: E402

W = 8


def by_hand(entries: list[float], length: int, p: int) -> int:
    """The entries a decode row at position p sees: the prompt's and the generated tokens' (P..p) within W."""
    return sum(p - e < W for e in [*entries, *range(length, p + 1)])


@pytest.mark.parametrize("p", [30, 31, 33, 36, 37, 40, 50])
def test_a_decode_rows_window_counts_the_entries_within_w_of_it(p):
    entries = torch.tensor([0.0, 1.0, 2.5, 5.5, 9.5, 15.5, 22.5, 27.0, 28.0, 29.0])  # a merged prompt of 30
    other = torch.arange(12, dtype=torch.float32)  # a prompt of 12 left whole
    true = torch.tensor([float(p), 40.0])
    got = plan([False, False], [0, 1, 2], [0, 1, 2], true, [(entries, 30), (other, 12)], W)
    want = by_hand(entries.tolist(), 30, p)
    if got is None:  # every row at the model's window
        assert want == W
        return
    assert got.spans == []
    assert got.groups[want].requests.tolist() == [0]
    assert got.groups[W].requests.tolist() == [1]  # request 1's generated tokens fill its window
    assert got.groups[want].rows.tolist() == [0] and got.groups[W].query_start.tolist() == [0, 1]


def test_a_merged_prompt_longer_than_w_goes_through_the_mask_and_the_rest_through_the_kernel():
    merged = torch.tensor([0.0, 2.5, 6.5, 10.5, 14.0, 15.0])  # 16 tokens, merged to 6
    short = torch.arange(6, dtype=torch.float32)  # 6 tokens, left whole
    small = torch.tensor([0.0, 2.5, 5.0])  # 6 tokens merged to 3: inside one window
    true = torch.cat([merged, short, small])
    got = plan([True, True, True], [0, 16, 22, 28], [0, 6, 12, 15], true, [None] * 3, W)
    assert [(a, b) for a, b, _ in got.spans] == [(0, 6)]
    by_hand = [[j <= i and merged[i] - merged[j] < W for j in range(6)] for i in range(6)]
    assert got.spans[0][2].tolist() == by_hand  # causal, and within W positions: row 5 (15.0) sees from 10.5
    assert list(got.groups) == [W]
    group = got.groups[W]
    assert group.requests.tolist() == [1, 2] and group.rows.tolist() == list(range(6, 15))
    assert group.query_start.tolist() == [0, 6, 9]


def test_other_attention_backends_are_refused():
    with pytest.raises(ValueError, match="CPU attention backend only"):
        check_impl(object())


def test_nothing_narrower_than_the_window_runs_the_stock_kernel():
    true = torch.arange(5, dtype=torch.float32)
    assert plan([True], [0, 5], [0, 5], true, [None], W) is None
