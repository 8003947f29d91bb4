#!/bin/bash
# The harness's own `hf` backend beside `slerpmerge` with a setting that shortens nothing, on the 20-question
# multiple-choice task (slerpmerge_mc), both built-in models. keep_end=256 over the default setting: every
# question + answer is far shorter than keep_start + keep_end (4 + 256 tokens), so no token is merged; the
# harness's tokenization is its default on both sides (Gemma's tokenizer adds <bos>). From the repository root,
# in .venv-eval (make eval-env). Writes to $OUT; the per-question comparison to results/lm-eval/$MODEL/mc.jsonl.
set -e
OUT=${OUT:-/tmp/lmeval-mc}
VENV=${VENV:-.venv-eval}
CACHE=$($VENV/bin/python -c 'from slerpmerge.models import cache_dir; print(cache_dir())')
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
run() {  # backend, model arguments
    $VENV/bin/slerpmerge lm-eval run --model $1 --model_args $2 --tasks slerpmerge_mc --batch_size 8 \
        --include_path src/slerpmerge/lm_eval_tasks --device cpu --log_samples --output_path $OUT/$MODEL-$1
}
for MODEL in ${MODELS:-smollm2-135m gemma3-270m}; do
    run slerpmerge pretrained=$MODEL,keep_end=256  # first: it converts the model into $CACHE/$MODEL if needed
    run hf pretrained=$CACHE/$MODEL,dtype=float32
    mkdir -p results/lm-eval/$MODEL
    $VENV/bin/python results/lm-eval/mc_compare.py $OUT/$MODEL-hf $OUT/$MODEL-slerpmerge \
        > results/lm-eval/$MODEL/mc.jsonl
done
