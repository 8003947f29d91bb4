"""The `hf` backend's multiple-choice answers beside `slerpmerge`'s, question by question (see mc.sh here).

    python results/lm-eval/mc_compare.py HF_DIR SLERPMERGE_DIR > mc.jsonl

Each folder is an lm-eval --output_path written with --log_samples on slerpmerge_mc. One line per question: each
side's log-likelihood per choice, its pick by acc (the largest) and acc_norm (by characters, as the harness
normalizes), and the largest difference between the two sides' log-likelihoods. A summary goes to stderr.
"""

import json
import sys
from pathlib import Path


def samples(folder: str) -> dict:
    f = next(Path(folder).rglob("samples_slerpmerge_mc_*.jsonl"))
    return {s["doc"]["item"]: s for s in map(json.loads, f.read_text().splitlines())}


def picks(s: dict) -> tuple[list[float], int, int]:
    lls = [float(r[0]) for r in s["filtered_resps"]]
    lengths = [len(c) for c in s["doc"]["choices"]]
    acc = max(range(len(lls)), key=lls.__getitem__)
    norm = max(range(len(lls)), key=lambda i: lls[i] / lengths[i])
    return lls, acc, norm


def main(hf_dir: str, ours_dir: str) -> None:
    hf, ours = samples(hf_dir), samples(ours_dir)
    totals = {"hf": [0, 0], "slerpmerge": [0, 0]}
    same, diff = 0, 0.0
    for item in sorted(hf):
        row, raw = {"item": item, "answer": hf[item]["doc"]["answer"]}, {}
        for side, s in (("hf", hf[item]), ("slerpmerge", ours[item])):
            lls, acc, norm = picks(s)
            raw[side] = lls
            row[side] = {"ll": [round(x, 4) for x in lls], "acc_pick": acc, "acc_norm_pick": norm,
                         "acc": s["acc"], "acc_norm": s["acc_norm"]}
            totals[side][0] += s["acc"]
            totals[side][1] += s["acc_norm"]
        row["max_ll_diff"] = max(abs(a - b) for a, b in zip(raw["hf"], raw["slerpmerge"]))
        row["same_picks"] = all(row["hf"][k] == row["slerpmerge"][k] for k in ("acc_pick", "acc_norm_pick"))
        same += row["same_picks"]
        diff = max(diff, row["max_ll_diff"])
        print(json.dumps(row))
    n = len(hf)
    print(f"{n} questions; acc / acc_norm: hf {totals['hf'][0]:.0f}/{totals['hf'][1]:.0f}, slerpmerge "
          f"{totals['slerpmerge'][0]:.0f}/{totals['slerpmerge'][1]:.0f}; same picks on {same}; largest "
          f"log-likelihood difference {diff:.2g}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:3])
