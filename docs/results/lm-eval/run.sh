#!/bin/bash
# The harness beside `slerpmerge eval` on the committed offline items (20 at 1024 tokens), SmolLM2-135M, base and
# the default setting, batch size 1. From the repository root, in .venv-eval (make eval-env). Writes to $OUT.
set -e
OUT=${OUT:-/tmp/lmeval-cmp}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
T=slerpmerge_once,slerpmerge_passkey,slerpmerge_word,slerpmerge_facts
for side in base default; do
    args=pretrained=smollm2-135m; [ $side = base ] && args=$args,method=base
    .venv-eval/bin/slerpmerge lm-eval run --model slerpmerge --model_args $args --tasks $T --batch_size 1 \
        --include_path src/slerpmerge/lm_eval_tasks --device cpu --log_samples --output_path $OUT/harness-$side
done
.venv-eval/bin/slerpmerge eval --out $OUT/eval --settings docs/results/lm-eval/default.json \
    --tasks once,passkey,word,facts --task-lengths 1024 --task-items 5 --lengths '' --windows 0 --speed-runs 0 \
    --threads 2
.venv-eval/bin/python docs/results/lm-eval/compare.py $OUT/harness-base $OUT/harness-default $OUT/eval \
    > docs/results/lm-eval/items.jsonl
