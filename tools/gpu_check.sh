#!/usr/bin/env bash
# The GPU check (`make gpu-check`): on a CUDA machine, build the GPU environment, run the vLLM equivalence tests
# on the platform's default attention backend, and time TTFT stock vs slerpmerge on a random-weight 1B Llama at
# 4096 and 16384 tokens. Meant to finish in under 8 minutes on one H100.
#
# The machine needs vLLM's CUDA build (`vllm` 0.32) and its dependencies: either already installed in the python3
# that holds the machine's CUDA torch, or as wheels in $WHEELS (no network is assumed). Results go to $OUT
# (default out/gpu-check): the test log and gpu-ttft.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# The machine's own CUDA torch stays: a venv that sees the system packages, slerpmerge on top without deps.
test -x .venv-gpu/bin/python || "$PY" -m venv --system-site-packages .venv-gpu
if ! .venv-gpu/bin/python -c "import vllm" 2>/dev/null; then
    test -n "${WHEELS:-}" || { echo "no vLLM here: put vllm 0.32 (CUDA) and its wheels in a folder, WHEELS=folder"; exit 2; }
    .venv-gpu/bin/python -m pip install -q --no-index --find-links "$WHEELS" 'vllm>=0.32,<0.33'
fi
.venv-gpu/bin/python -m pip install -q --no-deps --no-build-isolation -e .
.venv-gpu/bin/python -c "from slerpmerge import doctor; ok, lines = doctor.vllm_report(); print(*lines, sep='\n')"
export HF_HUB_OFFLINE=1
timeout 300 .venv-gpu/bin/python -m pytest -q tests/test_vllm_plugin.py -k "not server and not tensor_parallel" \
    2>&1 | tee "$OUT/tests.log" || true
timeout 240 .venv-gpu/bin/python tools/gpu_ttft.py --lengths 4096,16384 --runs 5 --out "$OUT/gpu-ttft.jsonl"
