#!/usr/bin/env bash
# The commands behind docs/results.md's tables from results/shapes/ (where the question sits, asked later beside kvpress's presses,
# question-free ranks, prose at 2x, tune --shape later, Gemma 3's sliding layers), as they ran (2-core CPU, float32), from the repository root.
# A record, not a script to run whole: several ran in parallel or resumed; the comments say which.
.venv/bin/slerpmerge calibrate --model smollm2-135m --question-free --score {last,heavy,keynorm,expected} --tasks once,word \
    --items 12 --threads 1 --out results/shapes/calibrate-smollm2-135m-{score}.json
.venv/bin/slerpmerge calibrate --model smollm2-135m --question-free --score keynorm --tasks {once,word} --items 16 \
    --threads 1 --out results/shapes/calibrate-smollm2-135m-keynorm-{task}.json
.venv-peers/bin/python results/shapes/asklater.py --length 2048 --model smollm2-135m --task once --shapes later,chat \
    --items 24 --config base --config default --config results/shapes/settings/question-led.json \
    --config results/shapes/settings/keynorm-early.json --config results/shapes/settings/truncate-0.6.json \
    --config results/shapes/settings/prune-14.json --config results/shapes/settings/select-7.json --presses ""
    # (keynorm-late.json for its 15 items; the same with --task word --shapes later for the words; "default" was
    # guided @14 + mix when these ran)
.venv-peers/bin/python results/shapes/asklater.py --length 4096 --model smollm2-135m --task once --shapes later --items 12 \
    --config base --config default --config results/shapes/settings/question-led.json \
    --config results/shapes/settings/keynorm-early.json --config results/shapes/settings/truncate-0.6.json --presses ""
.venv-peers/bin/python results/shapes/asklater.py --length 2048 --model gemma3-270m --task once --shapes later \
    --items 24 --config base --config default --config results/shapes/settings/gemma-truncate-0.75.json \
    --config results/shapes/settings/gemma-prune-11.json --presses ""
# the presses, after the correction (one thread each, two at a time):
for s in later end chat; do for t in once passkey word facts; do
.venv-peers/bin/python results/shapes/asklater.py --length 2048 --model smollm2-135m --task $t --shapes $s --items 24 \
    --config base --presses streaming,snapkv,expected,knorm --threads 1; done; done
.venv-peers/bin/python results/shapes/asklater.py --length 4096 --model smollm2-135m --task once --shapes later --items 12 \
    --config base --presses streaming,snapkv --threads 1
for s in later end; do for t in once passkey word facts; do
.venv-peers/bin/python results/shapes/asklater.py --length 2048 --model gemma3-270m --task $t --shapes $s --items 24 \
    --config base --presses streaming,snapkv,knorm --threads 1; done; done   # the expected press fails on Gemma 3
for t in once word; do .venv-peers/bin/python results/shapes/asklater.py --length 4096 --model smollm2-135m --task $t \
    --shapes later --items 24 --config base --presses streaming,snapkv,expected,knorm --threads 1; done   # 4096
for t in passkey facts; do .venv-peers/bin/python results/shapes/asklater.py --length 4096 --model smollm2-135m \
    --task $t --shapes later --items 24 --presses streaming,snapkv,expected,knorm --threads 1; done
for t in passkey once facts word; do .venv-peers/bin/python results/shapes/asklater.py --length 4096 --model smollm2-135m \
    --task $t --shapes end,chat --items 24 --presses streaming,snapkv,expected,knorm --threads 1; done   # 2 jobs
.venv-peers/bin/python results/shapes/asklater.py --length 4096 --model gemma3-270m --task once --shapes later --items 24 \
    --config base --presses streaming,snapkv,knorm --threads 1   # then word, passkey, facts without --config base
for t in once word passkey facts; do .venv-peers/bin/python results/shapes/asklater.py --length 4096 --model gemma3-270m \
    --task $t --shapes end --items 24 --presses streaming,snapkv,knorm --threads 1; done
.venv/bin/python results/shapes/report.py results/shapes/smollm2-135m.jsonl results/shapes/gemma3-270m.jsonl
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/prose-smollm2-135m \
    --settings results/shapes/prose-settings.jsonl --lengths 1024 --windows 24 --tasks "" --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/prose-retrieval-smollm2-135m \
    --settings results/shapes/prose-retrieval-settings.jsonl --lengths "" --windows 0 --tasks once,word \
    --task-lengths 2048 --task-items 12 --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --out results/shapes/speed-smollm2-135m --settings results/shapes/speed-settings.jsonl \
    --lengths 1024,2048 --windows 0 --tasks "" --speed-runs 5 --threads 2      # alone on the machine
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/end-smollm2-135m --settings results/shapes/end-settings.jsonl \
    --lengths "" --windows 0 --tasks once,word --task-lengths 2048 --task-items 12 --speed-runs 0 --threads 2
.venv/bin/slerpmerge eval --out results/shapes/speed-mix-smollm2-135m --settings results/shapes/speed-mix-settings.jsonl \
    --lengths 2048,4096 --windows 0 --tasks "" --speed-runs 5 --threads 2      # alone on the machine
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/shapes-smollm2-135m \
    --settings results/shapes/shapes-settings-smollm2-135m.jsonl --lengths "" --windows 0 --tasks passkey,facts,once,word \
    --shapes end,chat,later --task-lengths 2048 --task-items 24 --speed-runs 0 --threads 2
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/shapes-smollm2-135m-4096 \
    --settings results/shapes/shapes-settings-smollm2-135m.jsonl --lengths "" --windows 0 --tasks passkey,facts,once,word \
    --shapes end,chat,later --task-lengths 4096 --task-items 12 --speed-runs 0 --threads 1   # before select joined
# the settings file (a select pass at 4096 was started and stopped for time; its few rows are in the folder); then
# base and the default on 24 items:
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/shapes-smollm2-135m-4096 \
    --settings results/shapes/shapes-settings-smollm2-135m-default.jsonl --lengths "" --windows 0 \
    --tasks passkey,facts,once,word --shapes end,chat,later --task-lengths 4096 --task-items 24 --speed-runs 0 --threads 1
# and the same with --settings results/shapes/settings/truncate-0.6.json, then settings/select-7.json
# Asked later with reselection (each question chooses the context's tokens), base and the default, 2048 tokens:
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/shapes-smollm2-135m \
    --settings results/shapes/shapes-settings-smollm2-135m-default.jsonl --lengths "" --windows 0 \
    --tasks passkey,facts,once,word --shapes reselect --task-lengths 2048 --task-items 12 --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --model gemma3-270m --out results/shapes/shapes-gemma3-270m \
    --settings results/shapes/shapes-settings-gemma3-270m.jsonl --lengths "" --windows 0 --tasks passkey,facts,once,word \
    --shapes end,later --task-lengths 2048 --task-items 24 --speed-runs 0 --threads 1   # select @5 resumed later
.venv/bin/slerpmerge calibrate --model gemma3-270m --question-free --score keynorm --tasks once --length {2048,4096} \
    --items 16 --threads 1 --out results/shapes/calibrate-gemma3-270m-keynorm{,-4096}.json
# the mix: the two eval commands for Gemma's grid and its prose command, with --settings results/shapes/settings/gemma-mix.json
.venv/bin/slerpmerge eval --model gemma3-270m --out results/shapes/shapes-gemma3-270m-4096 \
    --settings results/shapes/shapes-settings-gemma3-270m.jsonl --lengths "" --windows 0 --tasks passkey,facts,once,word \
    --shapes end,later --task-lengths 4096 --task-items 12 --speed-runs 0 --threads 1   # word cells resumed later
.venv/bin/slerpmerge eval --model gemma3-270m --out results/shapes/shapes-gemma3-270m-4096 \
    --settings results/shapes/shapes-settings-gemma3-270m-4096.jsonl --lengths "" --windows 0 --tasks once,word \
    --shapes end,later --task-lengths 4096 --task-items 24 --speed-runs 0 --threads 1   # and --tasks passkey,facts beside it
for s in gemma-prune-11 gemma-truncate-0.75; do .venv/bin/slerpmerge eval --model gemma3-270m \
    --out results/shapes/shapes-gemma3-270m-4096 --settings results/shapes/settings/$s.json --lengths "" --windows 0 \
    --tasks once,word,passkey,facts --shapes end,later --task-lengths 4096 --task-items 24 --speed-runs 0 --threads 1; done
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/prose-default-smollm2-135m \
    --settings results/shapes/prose-default-settings.jsonl --lengths 1024 --windows 24 --tasks "" --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --model gemma3-270m --out results/shapes/prose-default-gemma3-270m \
    --settings results/shapes/prose-default-settings-gemma3-270m.jsonl --lengths 1024 --windows 24 --tasks "" \
    --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --out results/shapes/speed-prune-smollm2-135m --settings results/shapes/speed-prune-settings.jsonl \
    --lengths 2048,4096 --windows 0 --tasks "" --speed-runs 5 --threads 2      # alone on the machine
# re-timed after the keys-only probe: the same with --out results/shapes/speed-keysonly-smollm2-135m
.venv/bin/slerpmerge tune --model smollm2-135m --shape later --threads 2 --out results/shapes/tune-later-smollm2-135m.json
    # first run; re-run with the held-out check at --threads 1 (the file holds the second pick)
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/tune-later-check-smollm2-135m \
    --settings results/shapes/tune-later-settings.jsonl --lengths "" --windows 0 --tasks once,word --shapes later \
    --task-lengths 2048 --task-items 24 --speed-runs 0 --threads 2
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/tune-later-check-smollm2-135m \
    --settings results/shapes/tune-later-pick-settings.jsonl --lengths "" --windows 0 --tasks once,word --shapes end,chat \
    --task-lengths 2048 --task-items 24 --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --model smollm2-135m --out results/shapes/prose-default-smollm2-135m \
    --settings results/shapes/tune-later-pick-settings.jsonl --lengths 1024 --windows 24 --tasks "" --speed-runs 0 --threads 1
.venv/bin/slerpmerge bench --method guided --layer-cutoff 14 --target 0.25 --protect 0.75 --window 8 --spread 8 \
    --keep-start 4 --keep-end 32 --lengths 2048 --runs 2 --decode-tokens 0 --json \
    --score {last --heads 1,3 | heavy --heads 1,3 | keynorm --score-layer 2 --heads 0}

# Gemma 3 at 4096 tokens, sliding layers over true positions (gemma3-270m-window.jsonl, kept-gemma3-270m-4096.jsonl):
# kept.py follows the key through the prefill; window.py ran at commit 0b57112 (the rule the library applies now;
# it was deleted when the library took it over; at that commit it and its rows lived in docs/later/):
.venv/bin/python results/shapes/kept.py --model gemma3-270m --length 4096 --task once --out results/shapes/kept-gemma3-270m-4096.jsonl
# .venv/bin/python results/shapes/window.py --model gemma3-270m --length {4096,2048} --tasks once,facts,word,passkey --shapes end,later
# .venv/bin/python results/shapes/window.py --model gemma3-270m --length 4096 --tasks once --shapes end,later --entries 128
# .venv/bin/python results/shapes/window.py --model gemma3-270m --length 2048 --tasks once,facts --shapes end,later --entries 128
# .venv/bin/python results/shapes/window.py --report
# and with the library itself:
.venv/bin/slerpmerge eval --model gemma3-270m --out results/shapes/prose-default-gemma3-270m-window \
    --settings results/shapes/settings/gemma-mix.json --lengths 1024 --windows 24 --tasks "" --speed-runs 0 --threads 1
.venv/bin/slerpmerge eval --model gemma3-270m --out results/shapes/shapes-gemma3-270m-window \
    --settings results/shapes/settings/gemma-mix.json --lengths "" --windows 0 --tasks once,passkey,word,facts \
    --shapes end,later --task-lengths 2048 --task-items 24 --speed-runs 0 --threads 1
# What a later question costs each way (alone on the machine):
HF_HUB_OFFLINE=1 .venv/bin/python results/shapes/reselect_cost.py --model smollm2-135m --length 4096 --threads 2 \
    --runs 5 --out results/shapes/reselect-cost-smollm2-135m.jsonl
# Several questions on one document, asked in turn (Qwen2.5-Coder-0.5B, its default), then the report:
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python results/shapes/several.py --model qwen2.5-coder-0.5b --length 2048 \
    --documents 8 --out results/shapes/several-qwen2.5-coder-0.5b-2048.jsonl
.venv/bin/python results/shapes/several.py --report results/shapes/several-qwen2.5-coder-0.5b-2048.jsonl
