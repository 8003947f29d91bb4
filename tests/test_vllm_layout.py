"""The later layers' layout of one vLLM step, worked out by hand (no vLLM needed)."""

import pytest
import torch

from slerpmerge.vllm_plugin.layout import Shrinks, plan_step

BLOCK = 4


def slots_of(table_row, indices):
    return [table_row[i // BLOCK] * BLOCK + i % BLOCK for i in indices]


def test_a_prompt_and_a_decode_step_share_a_step():
    shrinks = Shrinks()
    shrinks.record(7, 3)  # request 1 (first block 7) had a prompt of 6 tokens shortened to 3, then decoded once
    table = torch.tensor([[2, 5, 9], [7, 8, 0]])
    # request 0: a 10-token prompt in rows 0..9; request 1: one decode token in row 10, its 8th token (seq_len 8)
    query_start, seq_lens = torch.tensor([0, 10, 11]), torch.tensor([10, 8])
    engine_slots = torch.tensor(slots_of([2, 5, 9], range(10)) + slots_of([7, 8, 0], [7]))
    layout = plan_step(query_start, seq_lens, table, engine_slots, BLOCK, shrinks, lambda n: n // 2)
    assert layout.prompt.tolist() == [True, False]
    assert layout.short_start.tolist() == [0, 5, 6]
    assert layout.seq_lens.tolist() == [5, 5]  # 10 - 5; 8 - 3
    assert layout.cache_index.tolist() == [0, 1, 2, 3, 4, 4]
    assert layout.slots.tolist() == slots_of([2, 5, 9], range(5)) + slots_of([7, 8, 0], [4])
    assert shrinks.lookup(2) == 5 and layout.shortened


def test_nothing_shortened_keeps_the_engine_layout():
    table = torch.tensor([[1, 2], [3, 4]])
    query_start, seq_lens = torch.tensor([0, 3, 4]), torch.tensor([3, 6])
    shrinks = Shrinks()
    shrinks.record(3, 0)
    engine_slots = torch.tensor(slots_of([1, 2], range(3)) + slots_of([3, 4], [5]))
    layout = plan_step(query_start, seq_lens, table, engine_slots, BLOCK, shrinks, lambda n: n)
    assert not layout.shortened
    assert torch.equal(layout.slots, engine_slots)
    assert layout.seq_lens.tolist() == [3, 6]


def test_a_prompt_split_across_steps_is_refused():
    with pytest.raises(RuntimeError, match="whole prompt"):
        plan_step(torch.tensor([0, 4]), torch.tensor([10]), torch.tensor([[1, 2, 3]]), torch.arange(4), BLOCK,
                  Shrinks(), lambda n: n)


def test_a_decode_step_of_an_unknown_request_is_refused():
    with pytest.raises(RuntimeError, match="did not shorten"):
        plan_step(torch.tensor([0, 1]), torch.tensor([10]), torch.tensor([[1, 2, 3]]), torch.tensor([41]), BLOCK,
                  Shrinks(), lambda n: n)


def test_a_block_size_that_does_not_match_the_table_is_refused():
    table = torch.tensor([[2, 5, 9]])
    engine_slots = torch.tensor(slots_of([2, 5, 9], range(6)))
    with pytest.raises(RuntimeError, match="blocks of 8"):
        plan_step(torch.tensor([0, 6]), torch.tensor([6]), table, engine_slots, 8, Shrinks(), lambda n: n)
