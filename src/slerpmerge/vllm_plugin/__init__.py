"""slerpmerge inside vLLM: the same methods, scores and plans as `slerpmerge.patch`, on the engine's own layers.

`register` is the `vllm.general_plugins` entry point, so every vLLM process (engine core, workers, Ray actors)
knows the `Slerpmerge<Architecture>` model classes. A user picks one, and the settings, by `hf_overrides`;
`engine_args` writes them, with the engine flags shortening needs:

    from vllm import LLM
    from slerpmerge.vllm_plugin import engine_args
    llm = LLM(**engine_args("smollm2-135m"))
"""

from __future__ import annotations

from .config import ARCHITECTURES, PREFIX, engine_args, serve_flags

__all__ = ["engine_args", "register", "serve_flags"]


def register() -> None:
    from vllm import ModelRegistry

    from .kvspec import register as register_kv_cache_spec

    register_kv_cache_spec()

    for architecture in ARCHITECTURES:
        name = PREFIX + architecture
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"slerpmerge.vllm_plugin.model:{name}")
