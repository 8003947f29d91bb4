"""KV memory of one request, and how many requests a fixed KV budget holds: stock vLLM against slerpmerge-in-vLLM.

Deterministic counts, no timing. For each engine (one at a time, the same `--kv-cache-memory-bytes`):

- the KV blocks one request holds after a prompt of --length tokens (at its first generated token, when vLLM has
  freed a sliding layer's blocks below its window), in layer-blocks (a group's blocks times its layers), and the
  ideal: the positions each layer must keep for the next token (a full layer all of them, a sliding one its
  window; after the cutoff the short prompt's), from the model's layer types alone;
- the engine's own figures: its KV blocks, and its "maximum concurrency" (vLLM's worst case, a request of
  --max-model-len tokens; a short prompt with a long generation is not shortened, so this is the same for both);
- a measured run: --requests prompts of --length tokens at once, greedy, the most requests the scheduler held
  running at one step (it admits one prompt a step, as chunked prefill is off), and its preemptions.

    .venv-vllm/bin/python results/vllm/kv_memory.py --model smollm2-135m --kv-cache-memory-bytes 629145600 \
        --requests 12 --out results/vllm/kv-smollm2-135m.json
    .venv-vllm/bin/python results/vllm/kv_memory.py --table results/vllm/kv-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the scheduler in this process, to count its blocks
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

from slerpmerge.architecture import layer_types  # noqa: E402
from slerpmerge.evaluate import corpus  # noqa: E402
from slerpmerge.merge import merged_length  # noqa: E402
from slerpmerge.models import BUILTINS, load  # noqa: E402
from slerpmerge.settings import MergeSettings  # noqa: E402
from slerpmerge.vllm_plugin import engine_args  # noqa: E402


def held(scheduler, request_id: str) -> dict:
    """Blocks the request holds in each KV-cache group, and those times the group's layers."""
    request_id = next(r for r in scheduler.requests if r.split("-")[0] == request_id)  # the engine adds a suffix
    groups = scheduler.kv_cache_config.kv_cache_groups
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    per_group = []
    for group, manager in zip(groups, managers):
        blocks = sum(not b.is_null for b in manager.req_to_blocks.get(request_id, []))
        per_group.append(dict(spec=type(group.kv_cache_spec).__name__, layers=len(group.layer_names),
                              blocks=blocks, block_size=manager.block_size))
    return dict(groups=per_group, layer_blocks=sum(g["blocks"] * g["layers"] for g in per_group))


def ideal_positions(hf_config, settings: MergeSettings | None, prompt: int, tokens: int) -> int:
    """Positions all layers must keep for the next token of a request with `tokens` tokens (`prompt` of them the
    prompt): a full layer every one, a sliding layer its window, a layer after the cutoff the short prompt's."""
    types, window = layer_types(hf_config), getattr(hf_config, "sliding_window", None)
    short = tokens if settings is None else merged_length(prompt, settings) + tokens - prompt
    cutoff = len(types) if settings is None else settings.cutoffs[0]
    total = 0
    for i, kind in enumerate(types):
        n = tokens if i <= cutoff else short
        total += min(n, window) if kind == "sliding_attention" else n
    return total


def one_request(llm, ids: list[int]) -> tuple[dict, dict]:
    """Blocks held at the prompt step and at the first generated token."""
    from vllm import SamplingParams, TokensPrompt

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    engine.add_request("one", TokensPrompt(prompt_token_ids=ids), SamplingParams(max_tokens=4, temperature=0,
                                                                                  ignore_eos=True))
    engine.step()
    at_prompt = held(scheduler, "one")
    engine.step()
    after = held(scheduler, "one")
    while engine.has_unfinished_requests():
        engine.step()
    return at_prompt, after


def crowd(llm, prompts: list[list[int]], new: int) -> dict:
    """All prompts at once: the most requests running at one step, and the preemptions."""
    from vllm import SamplingParams, TokensPrompt

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        engine.add_request(f"c{i}", TokensPrompt(prompt_token_ids=ids), params)
    most, steps, finished = 0, 0, 0
    while engine.has_unfinished_requests():
        finished += sum(out.finished for out in engine.step())
        steps += 1
        most = max(most, len(scheduler.running))
        if finished or not scheduler.waiting:  # full house reached, or everyone admitted
            break
    preempted = sum(r.num_preemptions for r in scheduler.requests.values())
    engine.abort_request([r for r in list(scheduler.requests)])
    while engine.has_unfinished_requests():
        engine.step()
    return dict(most_running=most, preemptions=preempted, steps=steps)


def table(paths: list[Path]) -> None:
    """The markdown table of docs/vllm.md from result files."""
    print("| model | engine | layer-blocks at the prompt | at the first new token | of stock | ideal of stock "
          "| vLLM's max. concurrency | requests held (measured) | preemptions |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        r = json.loads(path.read_text())
        stock = r["stock"]
        for name in ("stock", "slerpmerge"):
            e = r[name]
            held_ = e.get("crowd", {}).get("most_running", "")
            ratio = f" ({held_ / stock['crowd']['most_running']:.2f}x)" if held_ and name != "stock" else ""
            print(f"| {r['model']} | {name} | {e['at_prompt']['layer_blocks']} | {e['after_prompt']['layer_blocks']} "
                  f"| {e['after_prompt']['layer_blocks'] / stock['after_prompt']['layer_blocks']:.3f} "
                  f"| {e['ideal_positions'] / stock['ideal_positions']:.3f} | {e['max_concurrency']:.2f} "
                  f"| {held_}{ratio} | {e.get('crowd', {}).get('preemptions', '')} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", choices=list(BUILTINS))
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--kv-cache-memory-bytes", type=int, default=600 << 20)
    p.add_argument("--max-model-len", type=int, default=2112)
    p.add_argument("--requests", type=int, default=0, help="measured run: this many prompts at once (0: none)")
    p.add_argument("--new-tokens", type=int, default=32, help="measured run: greedy tokens per request")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, nargs="+", help="print the table of these result files, run nothing")
    args = p.parse_args()
    if args.table:
        return table(args.table)
    if args.out is None:
        p.error("--out is required to measure")

    from vllm import LLM
    from vllm.v1.core.kv_cache_utils import get_max_concurrency_for_kv_cache_config

    settings = BUILTINS[args.model].defaults
    short = MergeSettings.make(**settings)
    _, tokenizer = load(args.model)
    stream = corpus.token_stream(tokenizer, corpus.default_texts())
    begin = corpus.begin(tokenizer)
    prompts = [w.tolist() for w in corpus.windows(stream, args.length, max(1, args.requests), seed=1, start=begin)]
    shortened = engine_args(args.model, settings, max_model_len=args.max_model_len, dtype="float32", seed=0,
                            kv_cache_memory_bytes=args.kv_cache_memory_bytes)
    stock = {k: v for k, v in shortened.items() if k != "hf_overrides"}
    result = dict(model=args.model, settings=settings, length=args.length, max_model_len=args.max_model_len,
                  kv_cache_memory_bytes=args.kv_cache_memory_bytes, short_length=merged_length(args.length, short))
    for name, kwargs in (("stock", stock), ("slerpmerge", shortened)):
        llm = LLM(**kwargs)
        core = llm.llm_engine.engine_core.engine_core
        config = core.scheduler.kv_cache_config
        hf_config = llm.llm_engine.model_config.hf_config
        at_prompt, after = one_request(llm, prompts[0])
        row = dict(num_blocks=config.num_blocks, max_concurrency=get_max_concurrency_for_kv_cache_config(
            core.vllm_config, config), at_prompt=at_prompt, after_prompt=after,
            ideal_positions=ideal_positions(hf_config, None if name == "stock" else short, args.length,
                                            args.length + 1))
        if args.requests:
            row["crowd"] = crowd(llm, prompts, args.new_tokens)
        result[name] = row
        print(name, json.dumps(row), flush=True)
        del llm
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
