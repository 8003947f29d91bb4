"""Loaders and scoring for the offline harness tasks in this folder (lm-eval imports this file by path).

RULER's tasks (ruler_*.yaml) read the items `slerpmerge eval --suite ruler` makes and keeps (`ruler`).

The long-context items are `slerpmerge eval`'s own (written by make_items.py), scored by its own rule: the
answer anywhere in the generated text, any case. Their lengths are counted in one model's tokens, so each
built-in model has its own file: longctx.jsonl for smollm2-135m (the default model), longctx-<name>.jsonl for
the others. The loaders get the harness's metadata, which holds the model arguments: the file is chosen by
``items`` (``--metadata '{"items": "gemma3-270m"}'``) or else by ``pretrained``, a built-in name or a folder
named after one (the converted model under slerpmerge's cache); anything else reads SmolLM2's items.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from slerpmerge.evaluate.tasks import correct

HERE = Path(__file__).parent
DEFAULT_ITEMS = "longctx.jsonl"


def items_file(model: str | None = None) -> Path:
    """The long-context items measured in ``model``'s tokens: longctx-<name>.jsonl where one exists for the
    model's name (or its folder's), else longctx.jsonl (SmolLM2-135M's)."""
    if model:
        name = Path(str(model).rstrip("/")).name
        path = HERE / f"longctx-{name}.jsonl"
        if path.exists():
            return path
    return HERE / DEFAULT_ITEMS


def _rows(path: Path, task: str | None = None) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if task is None or r["task"] == task]
    return {"test": datasets.Dataset.from_list(rows)}


def _longctx(task: str, meta: dict) -> dict:
    return _rows(items_file(meta.get("items") or meta.get("pretrained")), task)


def once(**meta) -> dict:
    return _longctx("once", meta)


def passkey(**meta) -> dict:
    return _longctx("passkey", meta)


def word(**meta) -> dict:
    return _longctx("word", meta)


def facts(**meta) -> dict:
    return _longctx("facts", meta)


def mc(**_) -> dict:
    return _rows(HERE / "mc.jsonl")


def ruler(task: str, **meta) -> dict:
    """RULER's items of `task` in the tokenizer and chat template of the model the harness runs (``pretrained``: a
    built-in name or a model folder; SmolLM2-135M when none), as `slerpmerge eval --suite ruler` reads them, at
    each of the ``max_seq_lengths`` (default [4096]), ``ruler_items`` a length (default 20), ``seed`` (default 0)."""
    from transformers import AutoTokenizer

    from slerpmerge.evaluate import ruler as suite
    from slerpmerge.models import DEFAULT_MODEL, is_chat, resolve

    model, cache = meta.get("pretrained") or DEFAULT_MODEL, meta.get("cache_dir")
    folder = resolve(model, cache)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    rows = []
    for length in meta.get("max_seq_lengths", [4096]):
        made = suite.texts(tokenizer, folder, task, length, meta.get("ruler_items", 20), meta.get("seed", 0),
                           is_chat(tokenizer, model), cache)
        rows += [{"task": task, "item": i, "length": length, "prompt": r["context"] + r["question"],
                  "references": r["references"], "tokens": r["tokens"]} for i, r in enumerate(made)]
    return {"test": datasets.Dataset.from_list(rows)}


def ruler_score(doc: dict, results: list[str]) -> dict:
    from slerpmerge.evaluate.ruler import score

    return {"score": score(doc["task"], results[0], doc["references"])}


def process_results(doc: dict, results: list[str]) -> dict:
    return {"correct": float(correct(results[0], tuple(doc["answers"])))}
