"""The harness's answers beside `slerpmerge eval`'s, item by item (see run.sh here and results/quality.md).

    python results/lm-eval/compare.py HARNESS_BASE_DIR HARNESS_DEFAULT_DIR EVAL_DIR > items.jsonl

Each harness folder is an lm-eval --output_path written with --log_samples; EVAL_DIR holds results.jsonl.
"""

import json
import sys
from pathlib import Path

from vllm_backend import TASKS, samples  # (this folder) the same reading of lm-eval's logged samples


def harness(folder: str) -> dict:
    """(task, item) -> (right or wrong, the stripped answer) of each logged sample."""
    return {key: (s["correct"], s["resps"][0][0].strip()) for key, s in samples(folder).items()}


def main(base: str, default: str, eval_dir: str) -> None:
    rows = [json.loads(line) for line in (Path(eval_dir) / "results.jsonl").read_text().splitlines()]
    ev = {(r["kind"], r["item"], r["method"] == "base"): (r["correct"], r["answer"]) for r in rows}
    docs = {(s["doc"]["task"], s["doc"]["item"]): s["doc"]["roundtrip"] for s in samples(base).values()}
    sides = {"base": harness(base), "default": harness(default)}
    for task in TASKS:
        for item in range(max(i for t, i in docs if t == task) + 1):
            row = {"task": task, "item": item, "same_ids": docs[task, item]}
            for side, is_base in (("base", True), ("default", False)):
                h, e = sides[side][task, item], ev[task, item, is_base]
                row[side] = {"harness": h[0], "eval": e[0], "harness_answer": h[1][:80], "eval_answer": e[1],
                             "same_answer": h[1][:80] == e[1]}
            print(json.dumps(row))


if __name__ == "__main__":
    main(*sys.argv[1:4])
