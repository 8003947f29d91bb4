#!/usr/bin/env bash
# The exact commands behind docs/benchmarks.md, on a quiet machine (nothing else running), 2 torch threads.
set -euo pipefail
export HF_HUB_OFFLINE=1
S=.venv/bin/slerpmerge
B=results/benchmarks

# Single cutoffs across the depth (3, 11, 19, 25 of 30 layers), every length 256..4096, 5 timed runs each.
$S bench --model smollm2-135m --threads 2 --runs 5 --out $B/smollm2-135m-cpu | tee $B/smollm2-135m-cpu.txt

# guided @14, target 0.25, heads 1,3, keep 4+32 (no mix): what scoring and merging in rounds cost beside a layer,
# at 1024 and 2048 tokens.
$S bench --model smollm2-135m --threads 2 --runs 5 --lengths 1024,2048 \
  --config results/quality/smollm2-135m/default.json --out $B/smollm2-135m-cpu-guided | tee $B/smollm2-135m-cpu-guided.txt

# What the hooks cost a decode step: 256 tokens, where there is least to gain, 9 runs; cutoff 29 (the last layer)
# merges nothing any layer reads, so it is the hooks alone.
$S bench --model smollm2-135m --threads 2 --runs 9 --lengths 256 --cutoffs 3,19,25,29 \
  --out $B/smollm2-135m-cpu-decode256 | tee $B/smollm2-135m-cpu-decode256.txt

# SmolLM2's built-in default (prune @14 with a mix of layer 2's key norms, whole words) at 2048 tokens.
$S bench --model smollm2-135m --threads 2 --runs 5 --lengths 2048 --decode-tokens 0 --method prune --layer-cutoff 14 \
  --target 0.25 --heads 1,3 --window 8 --spread 8 --chunk 48 --words --keep-start 4 --keep-end 32 --mix keynorm@2:0 \
  --out $B/smollm2-135m-cpu-default-words
# The same setting ranking single tokens (no --chunk, --words): its score and plan beside a layer at 1024 and 2048.
$S bench --model smollm2-135m --threads 2 --runs 5 --lengths 1024,2048 --method prune --layer-cutoff 14 --target 0.25 \
  --heads 1,3 --window 8 --spread 8 --keep-start 4 --keep-end 32 --mix keynorm@2:0 \
  --out $B/smollm2-135m-cpu-default | tee $B/smollm2-135m-cpu-default.txt

# Gemma 3's built-in default (guided @11 with a mix of layer 2's key norms).
$S bench --model gemma3-270m --threads 2 --runs 5 --lengths 1024,2048 --method guided --layer-cutoff 11 --target 0.25 \
  --protect 0.75 --heads 2,3 --window 8 --spread 8 --keep-start 4 --keep-end 32 --mix keynorm@2:0 \
  --out $B/gemma3-270m-cpu-default | tee $B/gemma3-270m-cpu-default.txt
