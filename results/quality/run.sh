#!/usr/bin/env bash
# The exact commands behind docs/results.md (2-core CPU, float32), from the repository root after `make install`.
# Each eval resumes where it stopped if killed, and its summary covers every row in its folder. Quality passes
# (--speed-runs 0) ran one thread per process, two at a time; the speed passes (--speed-runs 5) ran afterwards, 2
# threads, with nothing else on the machine: they time each setting at each length and re-use the quality rows.
set -euo pipefail
export HF_HUB_OFFLINE=1
S=.venv/bin/slerpmerge
R=results/quality

# 1. Which heads find facts, per layer (items of seed 1, apart from eval's seed 0): calibrate.json.
$S calibrate --model smollm2-135m --threads 2 --out $R/smollm2-135m/calibrate.json
$S calibrate --model gemma3-270m --threads 2 --out $R/gemma3-270m/calibrate.json

# tune's pick for SmolLM2 (35 minutes on one thread; its printout is tune.txt); the SmolLM2 sweeps measure it too.
$S tune --model smollm2-135m --threads 1 --out $R/smollm2-135m/tuned.json
# Gemma 3's (half the windows and items, for time; 31 minutes on 2 threads).
$S tune --model gemma3-270m --threads 2 --windows 12 --items 4 --out $R/gemma3-270m/tuned.json

# The three sweeps; each takes the threads and the number of timed runs (0: quality only).
smol_prose() {  # every setting of settings.jsonl on 16 prose windows of 1024 tokens
  $S eval --model smollm2-135m --threads "$1" --speed-runs "$2" --out $R/smollm2-135m \
    --settings $R/smollm2-135m/settings.jsonl --config $R/smollm2-135m/tuned.json \
    --lengths 1024 --windows 16 --gen-tokens 8 --tasks "" --task-lengths 1024
}
smol_tasks() {  # settings-tasks.jsonl on 6 windows of 2048 and 24 items of each task at 2048
  $S eval --model smollm2-135m --threads "$1" --speed-runs "$2" --out $R/smollm2-135m \
    --settings $R/smollm2-135m/settings-tasks.jsonl --config $R/smollm2-135m/tuned.json \
    --lengths 2048 --windows 6 --gen-tokens 8 \
    --tasks once,facts,word,passkey --task-lengths 2048 --task-items 24
}
gemma() {  # 16 prose windows of 1024 tokens, 24 items of once and facts at 2048, <bos> first as eval builds them
  $S eval --model gemma3-270m --threads "$1" --speed-runs "$2" --out $R/gemma3-270m-bos \
    --settings $R/gemma3-270m/settings-tasks.jsonl --lengths 1024 --windows 16 --gen-tokens 8 \
    --tasks once,facts --task-lengths 2048 --task-items 24
}

# 2. Quality, one thread per process (two ran at a time). SmolLM2's settings files end with guided @14 and prune @14
# (the default) with a key-norm mix, measured after the others by re-running the same commands (eval computes only
# the rows a folder lacks); the default's speed pass is results/shapes/speed-keysonly-smollm2-135m (results/shapes/run.sh).
smol_prose 1 0
smol_tasks 1 0
gemma 1 0
# Gemma's rows (gemma3-270m-bos, gemma3-270m-bos-qa) begin items with <bos>, as eval builds them; $R/gemma3-270m
# holds its calibration, settings and tune files. Its shortened settings here ran before the sliding layers after the
# cutoff slid over true positions: docs/results.md reports from these folders only Gemma's base and truncation rows.

# 3. SmolLM2 at 4096 tokens, the moonshot: the pass key stated once and twice, 24 items each; then its speed pass.
moon() {
  $S eval --model smollm2-135m --threads "$1" --speed-runs "$2" --out $R/smollm2-135m-4096 \
    --settings $R/smollm2-135m/settings-4096.jsonl --lengths 4096 --windows 0 --gen-tokens 8 --tasks once,passkey \
    --task-lengths 4096 --task-items 24
}
moon 1 0

# Document QA at 1024 and 2048 tokens: the defaults and truncation (the speeds come from the sweeps' speed pass).
$S eval --model smollm2-135m --threads 1 --speed-runs 0 --out $R/smollm2-135m --settings $R/smollm2-135m/settings-qa.jsonl \
  --lengths 1024 --windows 0 --gen-tokens 8 --tasks qa --task-lengths 1024,2048 --task-items 16
# Gemma's with <bos> first, as eval builds items:
$S eval --model gemma3-270m --threads 1 --speed-runs 0 --out $R/gemma3-270m-bos-qa --settings $R/gemma3-270m/settings-qa.jsonl \
  --lengths 1024 --windows 0 --gen-tokens 8 --tasks qa --task-lengths 1024,2048 --task-items 16


# 4. Speed, quietly: 2 threads, 5 timed runs; the quality rows are re-used.
smol_prose 2 5
smol_tasks 2 5
gemma 2 5
moon 2 5
