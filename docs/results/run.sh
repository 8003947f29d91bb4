#!/usr/bin/env bash
# The exact commands behind docs/results/ (2-core CPU, float32, 2 torch threads). Run from the repository root
# after `make install`; each eval resumes where it stopped if killed.
set -euo pipefail
export HF_HUB_OFFLINE=1
S=.venv/bin/slerpmerge
R=docs/results

# 1. A tuned setting for SmolLM2 (calibration windows use seed 1; the evaluation below uses seed 0).
$S tune --model smollm2-135m --quick --target-agreement 0.9 --threads 2 --out $R/smollm2-135m-tuned.json

# 2. SmolLM2-135M: the grid (slerp, mean, drop at 5 cutoffs, truncate; no keep and keep 4+32), and beside it
#    the settings of the "beyond the original" work: the most similar half of the pairs, two stages, a long
#    recent window, and the tuned setting.
$S eval --model smollm2-135m --threads 2 --out $R/smollm2-135m \
  --lengths 64,256,1024 --cutoffs 3,9,15,21,26 --keeps 0:0,4:32 --windows 12 --gen-tokens 16 \
  --tasks passkey,qa --task-lengths 2048 --task-items 6 \
  --extra-setting '{"method": "slerp", "layer_cutoff": 9, "keep_start": 4, "keep_end": 32, "extra": {"ratio": 0.5}}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": 15, "keep_start": 4, "keep_end": 32, "extra": {"ratio": 0.5}}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": 3, "keep_start": 4, "keep_end": 32, "extra": {"ratio": 0.5}}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": [9, 21], "keep_start": 4, "keep_end": 32}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": [3, 15], "keep_start": 4, "keep_end": 32}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": 9, "keep_start": 4, "keep_end": 128}' \
  --extra-setting '{"method": "drop", "layer_cutoff": 9, "keep_start": 4, "keep_end": 128}' \
  --extra-setting '{"method": "truncate", "keep_start": 4, "keep_end": 128}' \
  --config $R/smollm2-135m-tuned.json

# 3. Gemma 3 270M (sliding + full layers): a smaller grid, keep 4+32 only.
$S eval --model gemma3-270m --threads 2 --out $R/gemma3-270m \
  --lengths 256,1024 --cutoffs 3,9,14 --keeps 4:32 --windows 6 --gen-tokens 8 \
  --tasks passkey,qa --task-lengths 2048 --task-items 2 \
  --extra-setting '{"method": "slerp", "layer_cutoff": 6, "keep_start": 4, "keep_end": 32, "extra": {"ratio": 0.5}}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": [6, 14], "keep_start": 4, "keep_end": 32}' \
  --extra-setting '{"method": "slerp", "layer_cutoff": 6, "keep_start": 4, "keep_end": 128}'
