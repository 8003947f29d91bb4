"""eval's retrieval tasks through vLLM, stock and with slerpmerge, beside the transformers path's committed rows.

The items are `slerpmerge eval`'s own (the same tasks, length, count and seed, the same corpus), so each vLLM answer
sits beside the row results/quality/<model>/results.jsonl holds for the same item: the base model's and the default
setting's, computed by the transformers path. Greedy, 8 new tokens, as eval.

    .venv-vllm/bin/python results/vllm/retrieval.py --model smollm2-135m --out results/vllm/retrieval-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as results/vllm/bench.py
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

from slerpmerge.evaluate import corpus  # noqa: E402
from slerpmerge.evaluate.tasks import TASKS, correct  # noqa: E402
from slerpmerge.models import BUILTINS, load  # noqa: E402
from slerpmerge.vllm_plugin import engine_args  # noqa: E402


def committed(path: Path, settings: dict, length: int) -> dict:
    """(task, item) -> correct, for the base model and the setting, from eval's rows."""
    want = json.dumps(dict(sorted(settings.items())), sort_keys=True)
    out = {"base": {}, "default": {}}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["kind"] not in TASKS or row["length"] != length:
            continue
        if row["method"] == "base":
            out["base"][row["kind"], row["item"]] = row["correct"]
        elif json.dumps(json.loads(row["setting"]), sort_keys=True) == want:
            out["default"][row["kind"], row["item"]] = row["correct"]
    return out


def main() -> None:
    from vllm import LLM, SamplingParams, TokensPrompt

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", choices=list(BUILTINS))
    p.add_argument("--tasks", default="once,passkey,word,facts")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    settings = BUILTINS[args.model].defaults
    _, tokenizer = load(args.model)
    stream = corpus.token_stream(tokenizer, corpus.default_texts())
    items = [(task, i, item) for task in args.tasks.split(",")
             for i, item in enumerate(TASKS[task](tokenizer, stream, args.length, args.items, 0))]
    rows = committed(Path("results/quality") / args.model / "results.jsonl", settings, args.length)
    shortened = engine_args(args.model, settings, max_model_len=args.length + 64, dtype="float32",
                            kv_cache_memory_bytes=2 << 30, seed=0)
    stock = {k: v for k, v in shortened.items() if k != "hf_overrides"}
    params = SamplingParams(max_tokens=8, temperature=0)
    prompts = [TokensPrompt(prompt_token_ids=item.ids[0].tolist()) for _, _, item in items]
    answers = {}
    for name, engine in (("stock", stock), ("slerpmerge", shortened)):
        llm = LLM(**engine)
        answers[name] = [o.outputs[0].text for o in llm.generate(prompts, params)]
        del llm
    report = dict(model=args.model, length=args.length, settings=settings, tasks={})
    for task in args.tasks.split(","):
        picked = [(k, i, item) for k, (t, i, item) in enumerate(items) if t == task]
        right = {name: [correct(answers[name][k], item.answers) for k, _, item in picked] for name in answers}
        base = [rows["base"].get((task, i)) for _, i, _ in picked]
        default = [rows["default"].get((task, i)) for _, i, _ in picked]
        report["tasks"][task] = dict(
            vllm_stock=sum(right["stock"]), vllm_slerpmerge=sum(right["slerpmerge"]),
            transformers_base=None if None in base else sum(base),
            transformers_default=None if None in default else sum(default),
            same_as_transformers_default=None if None in default else sum(
                float(a) == d for a, d in zip(right["slerpmerge"], default)),
            stock_same_as_transformers_base=None if None in base else sum(
                float(a) == b for a, b in zip(right["stock"], base)),
            items=len(picked))
        print(task, json.dumps(report["tasks"][task]), flush=True)
    report["answers"] = answers
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
