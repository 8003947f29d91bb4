"""The later layers' step metadata, built from vLLM's own `CommonAttentionMetadata` and checked field by field
against a hand-worked step (no engine needed; vLLM must be installed)."""

import pytest
import torch

pytest.importorskip("vllm")
from vllm.v1.attention.backend import CommonAttentionMetadata  # noqa: E402

from slerpmerge.vllm_plugin.backend import Buffers, is_dummy, short_metadata  # noqa: E402
from slerpmerge.vllm_plugin.layout import Shrinks, plan_step  # noqa: E402

BLOCK = 4
TABLE = torch.tensor([[2, 5, 9], [7, 8, 1], [0, 0, 0]], dtype=torch.int32)


def slots_of(row, positions):
    return [row[p // BLOCK] * BLOCK + p % BLOCK for p in positions]


def metadata(query_start, seq_lens, slots, num_tokens, **extra) -> CommonAttentionMetadata:
    """A step as vLLM's model runner hands it to a builder (int32 lengths, int64 slots, CPU copies)."""
    query_start = torch.tensor(query_start, dtype=torch.int32)
    seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
    query_lens = query_start[1:] - query_start[:-1]
    return CommonAttentionMetadata(
        query_start_loc=query_start.clone(), query_start_loc_cpu=query_start, seq_lens=seq_lens.clone(),
        seq_lens_cpu_upper_bound=seq_lens, num_reqs=len(seq_lens), num_actual_tokens=num_tokens,
        max_query_len=int(query_lens.max()), max_seq_len=int(seq_lens.max()), block_table_tensor=TABLE,
        slot_mapping=torch.tensor(slots, dtype=torch.int64), is_prefilling=query_lens == seq_lens,
        positions=torch.arange(num_tokens), **extra)


def mixed_step() -> CommonAttentionMetadata:
    """Request 0: a 10-token prompt (rows 0-9); request 1: decoding its 8th token (row 10); request 2: an empty
    row and two pad tokens, as a CUDA graph's batch is padded."""
    slots = slots_of(TABLE[0].tolist(), range(10)) + slots_of(TABLE[1].tolist(), [7]) + [-1, -1]
    return metadata([0, 10, 11, 11], [10, 8, 0], slots, 13)


def test_every_length_field_of_a_short_step_by_hand():
    cm = mixed_step()
    cm.compute_num_computed_tokens()  # as a builder of the early layers would have: a cache of the long step's
    shrinks = Shrinks()
    shrinks.record(7, 3)  # request 1's prompt of 6 tokens was shortened to 3
    layout = plan_step(cm.query_start_loc_cpu, cm.seq_lens_cpu_upper_bound, cm.block_table_tensor,
                       cm.slot_mapping, BLOCK, shrinks, lambda n: n // 2)
    short = short_metadata(cm, layout, Buffers(8, 32, torch.device("cpu")))
    # the prompt keeps 5 of 10 rows; the decode row stays one; the empty row none; the 2 pad tokens stay
    assert short.query_start_loc.tolist() == short.query_start_loc_cpu.tolist() == [0, 5, 6, 6]
    assert short.seq_lens.tolist() == short.seq_lens_cpu_upper_bound.tolist() == [5, 5, 0]  # 10 - 5, 8 - 3, 0
    assert short.num_actual_tokens == 8 and short.num_reqs == 3
    assert (short.max_query_len, short.max_seq_len) == (5, 5)
    # the prompt's rows at its first 5 positions' slots; the decode row at cache index 8 - 3 - 1 = 4; pads stay
    assert short.slot_mapping.tolist() == slots_of(TABLE[0].tolist(), range(5)) + slots_of(TABLE[1].tolist(), [4]) \
        + [-1, -1]
    assert short.compute_num_computed_tokens().tolist() == [0, 4, 0]  # not the long step's [0, 7, 0]
    assert short.positions is None  # merged rows' positions are the model's to find
    assert short.block_table_tensor is cm.block_table_tensor and short.is_prefilling is cm.is_prefilling
    for name in ("query_start_loc", "seq_lens", "slot_mapping"):
        assert getattr(short, name).dtype == getattr(cm, name).dtype
    assert short.query_start_loc_cpu.dtype == torch.int32 and short.seq_lens_cpu_upper_bound.dtype == torch.int32


def test_the_short_steps_lengths_and_slots_stay_in_the_same_tensors():
    """A CUDA graph replays the addresses it captured: each step's values go into the builder's buffers."""
    buffers = Buffers(8, 32, torch.device("cpu"))
    addresses = []
    for prompt in (10, 6):
        cm = metadata([0, prompt], [prompt], slots_of(TABLE[0].tolist(), range(prompt)), prompt)
        layout = plan_step(cm.query_start_loc_cpu, cm.seq_lens, cm.block_table_tensor, cm.slot_mapping, BLOCK,
                           Shrinks(), lambda n: n // 2)
        short = short_metadata(cm, layout, buffers)
        assert short.seq_lens.tolist() == [prompt // 2]
        addresses.append([getattr(short, f).data_ptr() for f in ("query_start_loc", "seq_lens", "slot_mapping")])
    assert addresses[0] == addresses[1] == [buffers.query_start.data_ptr(), buffers.seq_lens.data_ptr(),
                                            buffers.slots.data_ptr()]


def test_a_warm_up_batch_passes_through_unchanged():
    """vLLM's FlashInfer warm-up: decode rows of 1 token and a "prompt" of n of its n + 1 tokens, all pad slots."""
    cm = metadata([0, 1, 2, 3, 16], [1, 1, 1, 14], [-1] * 16, 16)
    assert is_dummy(cm)
    with pytest.raises(RuntimeError, match="whole prompt"):  # as a real step it would be refused
        plan_step(cm.query_start_loc_cpu, cm.seq_lens, cm.block_table_tensor, cm.slot_mapping, BLOCK, Shrinks(),
                  lambda n: n)
    short = short_metadata(cm, None, Buffers(8, 32, torch.device("cpu")))
    for name in ("query_start_loc", "query_start_loc_cpu", "seq_lens", "seq_lens_cpu_upper_bound", "slot_mapping"):
        assert torch.equal(getattr(short, name), getattr(cm, name)), name
    assert (short.num_actual_tokens, short.max_query_len, short.max_seq_len) == (16, 13, 14)


def test_a_real_step_is_no_dummy():
    assert not is_dummy(mixed_step())
    # one real token among pads (a graph-padded decode step) is a real step
    assert not is_dummy(metadata([0, 1], [8], slots_of(TABLE[1].tolist(), [7]) + [-1] * 3, 4))


def test_a_field_a_short_step_cannot_carry_is_refused():
    cm = mixed_step()
    cm.dcp_local_seq_lens = cm.seq_lens
    with pytest.raises(RuntimeError, match="dcp_local_seq_lens"):
        short_metadata(cm, None, Buffers(8, 32, torch.device("cpu")))


def test_each_rows_cache_index_is_in_the_buffers():
    """The later layers' positions under positions="reindex": a prompt's rows 0..S'-1, a decode row P - S' + g."""
    cm, buffers = mixed_step(), Buffers(8, 32, torch.device("cpu"))
    shrinks = Shrinks()
    shrinks.record(7, 3)
    layout = plan_step(cm.query_start_loc_cpu, cm.seq_lens, cm.block_table_tensor, cm.slot_mapping, BLOCK, shrinks,
                       lambda n: n // 2)
    short_metadata(cm, layout, buffers)
    assert buffers.positions[:8].tolist() == [0, 1, 2, 3, 4, 4, 0, 0]


def test_a_decode_step_replays_where_its_graph_was_captured():
    """FULL_DECODE_ONLY: vLLM captures a graph on a dummy batch of single-token rows (pad slots), then replays it for
    real decode steps padded to the same size. Every tensor the later layers read must sit where the capture put it
    and hold the real step's short values."""
    buffers, fields = Buffers(8, 32, torch.device("cpu")), ("query_start_loc", "seq_lens", "slot_mapping")
    capture = metadata([0, 1, 2, 3, 4], [1, 1, 1, 1], [-1] * 4, 4)
    assert is_dummy(capture)
    captured = short_metadata(capture, None, buffers)
    shrinks = Shrinks()
    shrinks.record(2, 5)  # request 0: a prompt of 10 kept 5
    shrinks.record(7, 3)  # request 1: a prompt of 6 kept 3
    # two requests decode (their 12th and 8th tokens); two empty rows pad the batch to the graph's 4
    step = metadata([0, 1, 2, 2, 2], [12, 8, 0, 0], slots_of(TABLE[0].tolist(), [11]) + slots_of(TABLE[1].tolist(), [7])
                    + [-1, -1], 4)
    layout = plan_step(step.query_start_loc_cpu, step.seq_lens, step.block_table_tensor, step.slot_mapping, BLOCK,
                       shrinks, lambda n: n)
    replayed = short_metadata(step, layout, buffers)
    for name in fields:
        assert getattr(replayed, name).data_ptr() == getattr(captured, name).data_ptr(), name
        assert getattr(replayed, name).shape == getattr(captured, name).shape, name
    assert replayed.seq_lens.tolist() == [7, 5, 0, 0]  # 12 - 5, 8 - 3
    assert replayed.slot_mapping.tolist() == slots_of(TABLE[0].tolist(), [6]) + slots_of(TABLE[1].tolist(), [4]) \
        + [-1, -1]
    assert replayed.query_start_loc.tolist() == [0, 1, 2, 2, 2]
    assert buffers.positions[:4].tolist() == [6, 4, 0, 0]


def test_graphs_only_where_a_step_keeps_its_shape():
    """The later layers' builder allows graphs of single-token decode steps at most, and none where its base has none."""
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.flex_attention import FlexAttentionBackend

    from slerpmerge.vllm_plugin.backend import shortened_backend

    def support(base):
        return shortened_backend(base).get_builder_cls().get_cudagraph_support(None, None)

    assert FlexAttentionBackend.get_builder_cls().get_cudagraph_support(None, None) == AttentionCGSupport.ALWAYS
    assert support(FlexAttentionBackend) == AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    assert CPUAttentionBackend.get_builder_cls().get_cudagraph_support(None, None) == AttentionCGSupport.NEVER
    assert support(CPUAttentionBackend) == AttentionCGSupport.NEVER
