"""The harness's answers beside `slerpmerge eval`'s, item by item (see run.sh here and results/quality.md).

    python results/lm-eval/compare.py HARNESS_BASE_DIR HARNESS_DEFAULT_DIR EVAL_DIR > items.jsonl

Each harness folder is an lm-eval --output_path written with --log_samples; EVAL_DIR holds results.jsonl.
"""

import json
import sys
from pathlib import Path

TASKS = ("once", "passkey", "word", "facts")


def harness(folder: str) -> dict:
    out = {}
    for f in Path(folder).rglob("samples_slerpmerge_*.jsonl"):
        task = f.name.split("_")[2]
        for line in f.read_text().splitlines():
            s = json.loads(line)
            out[task, s["doc"]["item"]] = (s["correct"], s["resps"][0][0].strip())
    return out


def main(base: str, default: str, eval_dir: str) -> None:
    rows = [json.loads(line) for line in (Path(eval_dir) / "results.jsonl").read_text().splitlines()]
    ev = {(r["kind"], r["item"], r["method"] == "base"): (r["correct"], r["answer"]) for r in rows}
    docs = {}
    for f in Path(base).rglob("samples_slerpmerge_*.jsonl"):
        for line in f.read_text().splitlines():
            d = json.loads(line)["doc"]
            docs[d["task"], d["item"]] = d["roundtrip"]
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
