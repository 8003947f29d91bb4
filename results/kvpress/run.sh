#!/usr/bin/env bash
# The commands behind docs/results.md's kvpress tables from results/kvpress/ (time to first token, decode, KV bytes, prose, pass key), as they ran (2-core CPU, float32), from the repository root.
# A record, not a script to run whole: several ran in parallel or resumed; the comments say which.
make peers
.venv-peers/bin/python results/kvpress/compare.py --model smollm2-135m --lengths 1024 --windows 6 --items 8 --out results/kvpress
.venv-peers/bin/python results/kvpress/compare.py --model gemma3-270m --lengths 1024 --windows 6 --items 8 --out results/kvpress
.venv-peers/bin/python results/kvpress/compare.py --model smollm2-135m --lengths 2048 --windows 6 --items 8 \
    --config results/quality/smollm2-135m/tuned.json --out results/kvpress      # 39 min here
.venv-peers/bin/python results/kvpress/compare.py --model gemma3-270m --lengths 2048 --windows 6 --items 8 --out results/kvpress  # 25 min
.venv-peers/bin/python results/kvpress/compare.py --model smollm2-135m --lengths 4096 --windows 6 --items 8 \
    --config results/quality/smollm2-135m/tuned.json --out results/kvpress      # 1 h 55 min (34 min timing)
.venv-peers/bin/python results/kvpress/compare.py --model smollm2-135m --lengths 1024 --windows 6 --items 8 \
    --config results/quality/smollm2-135m/tuned.json --out results/kvpress      # the * rows at 1024: 9 min
.venv-peers/bin/python results/kvpress/compare.py --model gemma3-270m --lengths 4096 --windows 6 --items 8 \
    --config results/quality/gemma3-270m/tuned.json --out results/kvpress      # 2 h 8 min (30 min timing)
.venv-peers/bin/python results/kvpress/compare.py --model gemma3-270m --lengths 1024,2048 --windows 6 --items 8 \
    --config results/quality/gemma3-270m/tuned.json --out results/kvpress      # the * rows at 1024 and 2048: 24 min
.venv/bin/python results/kvpress/report.py results/kvpress   # the tables above, and the plots
