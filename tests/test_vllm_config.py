"""The vLLM adapter's settings, engine checks and engine arguments (no vLLM needed: config.py imports none)."""

import json
from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from slerpmerge.vllm_plugin.config import check_engine, engine_args, serve_flags, settings_from_config


def llama(**slerpmerge):
    config = LlamaConfig(num_hidden_layers=4, num_attention_heads=4)
    if slerpmerge:
        config.slerpmerge = slerpmerge
    return config


def engine(**changes):
    base = dict(enable_chunked_prefill=False, max_num_batched_tokens=512, enable_prefix_caching=False,
                enforce_eager=True, speculative_config=None, pipeline_parallel_size=1, decode_context_parallel_size=1,
                prefill_context_parallel_size=1, kv_transfer_config=None, kv_sharing_fast_prefill=False,
                compilation_mode=0, cudagraph_mode="NONE")  # what vLLM resolves --enforce-eager to
    base.update(changes)
    return SimpleNamespace(
        scheduler_config=SimpleNamespace(enable_chunked_prefill=base["enable_chunked_prefill"],
                                         max_num_batched_tokens=base["max_num_batched_tokens"]),
        cache_config=SimpleNamespace(enable_prefix_caching=base["enable_prefix_caching"],
                                     kv_sharing_fast_prefill=base["kv_sharing_fast_prefill"]),
        model_config=SimpleNamespace(max_model_len=512, enforce_eager=base["enforce_eager"]),
        parallel_config=SimpleNamespace(
            pipeline_parallel_size=base["pipeline_parallel_size"],
            decode_context_parallel_size=base["decode_context_parallel_size"],
            prefill_context_parallel_size=base["prefill_context_parallel_size"]),
        speculative_config=base["speculative_config"], kv_transfer_config=base["kv_transfer_config"],
        compilation_config=SimpleNamespace(mode=base["compilation_mode"],
                                           cudagraph_mode=SimpleNamespace(name=base["cudagraph_mode"])))


def test_settings_come_from_the_overrides_and_are_checked():
    s = settings_from_config(llama(layer_cutoff=2, method="prune", target=0.5, keep_end=8))
    assert (s.method, s.layer_cutoff, s.target, s.keep_end) == ("prune", 2, 0.5, 8)
    with pytest.raises(ValueError, match="hf_overrides"):
        settings_from_config(llama())
    with pytest.raises(ValueError, match="layer_cutoff must be in 0..3"):
        settings_from_config(llama(layer_cutoff=4))
    with pytest.raises(ValueError, match="one cutoff"):
        settings_from_config(llama(layer_cutoff=[1, 2]))
    with pytest.raises(ValueError, match="similar"):
        settings_from_config(llama(layer_cutoff=1, similarity=0.5))
    with pytest.raises(ValueError, match="target"):
        settings_from_config(llama(layer_cutoff=1, method="guided", target=2.0))


@pytest.mark.parametrize("change, flag", [
    (dict(enable_chunked_prefill=True), "--no-enable-chunked-prefill"),
    (dict(max_num_batched_tokens=256), "--max-num-batched-tokens 512"),
    (dict(enable_prefix_caching=True), "--no-enable-prefix-caching"),
    # vLLM's default without --enforce-eager: torch.compile (mode 3) and graphs of every step
    (dict(enforce_eager=False, compilation_mode=3, cudagraph_mode="FULL_AND_PIECEWISE"), "--enforce-eager"),
    (dict(enforce_eager=False, compilation_mode=0, cudagraph_mode="FULL"), "FULL_DECODE_ONLY"),
    (dict(enforce_eager=False, compilation_mode=3, cudagraph_mode="FULL_DECODE_ONLY"), '"mode": 0'),
    (dict(speculative_config=object()), "speculative"),
    (dict(pipeline_parallel_size=2), "--pipeline-parallel-size 1"),
    (dict(decode_context_parallel_size=2), "--decode-context-parallel-size 1"),
    (dict(prefill_context_parallel_size=2), "--prefill-context-parallel-size 1"),
    (dict(kv_transfer_config=object()), "no --kv-transfer-config"),
    (dict(kv_sharing_fast_prefill=True), "no --kv-sharing-fast-prefill"),
])
def test_an_engine_flag_that_cannot_work_is_refused_with_the_flag_to_use(change, flag):
    check_engine(engine())  # the arguments engine_args gives pass
    with pytest.raises(ValueError, match=flag):
        check_engine(engine(**change))


def test_graphs_of_decode_steps_alone_are_accepted():
    check_engine(engine(enforce_eager=False, compilation_mode=0, cudagraph_mode="FULL_DECODE_ONLY"))


def test_engine_args_for_a_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    args = engine_args(str(tmp_path), {"layer_cutoff": 3}, max_model_len=2048)
    assert args["hf_overrides"] == {"architectures": ["SlerpmergeQwen3ForCausalLM"], "slerpmerge": {"layer_cutoff": 3}}
    assert args["max_num_batched_tokens"] == 2048 and not args["enable_chunked_prefill"]
    flags = serve_flags(args)
    assert flags[flags.index("--model") + 1] == str(tmp_path)
    assert flags[flags.index("--hf-overrides") + 1] == json.dumps(args["hf_overrides"], separators=(",", ":"))
    assert "--no-enable-prefix-caching" in flags and "--enforce-eager" in flags
    with pytest.raises(ValueError, match="give the settings"):
        engine_args(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="cannot drive GPT2LMHeadModel"):
        engine_args(str(tmp_path), {"layer_cutoff": 3})
