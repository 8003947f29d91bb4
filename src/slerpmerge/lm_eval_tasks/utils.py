"""Loaders and scoring for the offline harness tasks in this folder (lm-eval imports this file by path).

The long-context items are `slerpmerge eval`'s own (written by make_items.py), scored by its own rule: the
answer anywhere in the generated text, any case.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from slerpmerge.evaluate.tasks import correct

HERE = Path(__file__).parent


def _rows(name: str, task: str | None = None) -> dict:
    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if task is None or r["task"] == task]
    return {"test": datasets.Dataset.from_list(rows)}


def once(**_) -> dict:
    return _rows("longctx.jsonl", "once")


def passkey(**_) -> dict:
    return _rows("longctx.jsonl", "passkey")


def word(**_) -> dict:
    return _rows("longctx.jsonl", "word")


def facts(**_) -> dict:
    return _rows("longctx.jsonl", "facts")


def mc(**_) -> dict:
    return _rows("mc.jsonl")


def process_results(doc: dict, results: list[str]) -> dict:
    return {"correct": float(correct(results[0], tuple(doc["answers"])))}
