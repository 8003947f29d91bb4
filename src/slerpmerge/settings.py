"""The merge settings: what they are, how they are checked, how they are named, and how every command spells them.

One `MergeSettings` is what `patch` takes; `patch(model, **settings.kwargs())` re-applies it, and a `tune` file is
those keyword arguments as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from pathlib import Path

from . import methods
from .scorers import SCORERS
from .plan import check_keeps

POSITIONS = ("original", "reindex")
CACHES = ("merged", "recompute")


@dataclass(frozen=True)
class MergeSettings:
    """How a patched model merges."""

    layer_cutoff: int | tuple[int, ...]  # merge after this layer; several: merge again after each
    keep_start: int = 0  # the first real tokens stay as they are (attention sinks)
    keep_end: int = 0  # and the last ones (the recent window, the question)
    positions: str = "original"  # later layers see each merged token at its span's mean position, or "reindex"
    method: str = "slerp"  # a row of `methods.METHODS`
    cache: str = "merged"  # or "recompute": no cache, the whole sequence merged again at every step
    similarity: float | None = None  # pair methods: merge only pairs whose cosine reaches this
    ratio: float | None = None  # pair methods: or only this fraction of the pairs, the most similar first
    target: float | None = None  # scored methods: the fraction of each row's tokens left after a cutoff
    protect: float | None = None  # guided methods: the share of those kept exact (the best-scored tokens)
    score: str | None = None  # scored methods: how tokens are ranked, a row of `scorers.SCORERS` (default "last")
    score_layer: int | None = None  # scored methods: rank at this layer, at or before the cutoff (default the cutoff)
    mix: dict | None = None  # scored methods: a second ranking {"score", "layer", "heads"} sharing the kept tokens
    window: int | None = None  # scored methods: how many last tokens' queries score (default keep_end, or 32)
    heads: tuple[int, ...] | None = None  # scored methods: score with these query heads only (calibrated)
    spread: int | None = None  # scored methods: a token scores the best within this many tokens of it
    chunk: int | None = None  # scored methods: rank and keep runs of this many tokens whole (values stay whole)
    words: bool | None = None  # scored methods: runs also end where words do (needs the model's tokenizer)

    def __hash__(self) -> int:  # (merged lengths are cached by settings) `mix` is a dict
        return hash(json.dumps(self.kwargs(), sort_keys=True))

    @property
    def cutoffs(self) -> tuple[int, ...]:
        c = self.layer_cutoff
        return tuple(c) if isinstance(c, (list, tuple)) else (c,)

    @property
    def options(self) -> dict:
        """The method's own settings, defaults filled in."""
        return check_options(self.method, {k: getattr(self, k) for k in OPTION_NAMES})

    @property
    def score_window(self) -> int:
        return self.window or self.keep_end or 32

    def terms(self, cutoff: int) -> list["Term"]:
        """The rankings a scored setting keeps tokens by at ``cutoff``: its own, and its `mix` if it has one (none for
        a method that does not score)."""
        if not methods.get(self.method).scored:
            return []
        o = self.options
        own = Term(o["score"], cutoff if o["score_layer"] is None else o["score_layer"], o["heads"])
        mix = o["mix"]
        if mix is None:
            return [own]
        heads = mix.get("heads")
        return [own, Term(mix["score"], mix.get("layer", own.layer), None if heads is None else tuple(heads))]

    def kwargs(self) -> dict:
        """The patch keyword arguments that differ from the defaults, JSON-ready."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "layer_cutoff" or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def make(cls, layer_cutoff, **kwargs) -> "MergeSettings":
        """From patch keyword arguments: lists become tuples, a one-element list a single cutoff."""
        unknown = set(kwargs) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown merge settings: {', '.join(sorted(unknown))}")
        if isinstance(layer_cutoff, (list, tuple)):
            layer_cutoff = layer_cutoff[0] if len(layer_cutoff) == 1 else tuple(layer_cutoff)
        if isinstance(kwargs.get("heads"), list):
            kwargs["heads"] = tuple(kwargs["heads"])
        return cls(layer_cutoff, **kwargs)


@dataclass(frozen=True)
class Term:
    """One ranking of a scored setting: a scorer, the layer whose queries and keys it reads, the heads it averages."""

    score: str
    layer: int
    heads: tuple[int, ...] | None


OPTION_NAMES = ("similarity", "ratio", "target", "protect", "score", "score_layer", "mix", "window", "heads",
                "spread", "chunk", "words")
MIX_KEYS = ("score", "layer", "heads")
_RANGES = {"similarity": (-1.0, 1.0, "a cosine threshold"), "ratio": (0.0, 1.0, "the fraction of pairs to merge"),
           "target": (0.0, 1.0, "the fraction of tokens kept"), "protect": (0.0, 1.0, "the share kept exact")}


def check_options(method: str, options: dict) -> dict:
    """The options ``method`` reads, with defaults filled in; an option it does not read, or out of range, raises."""
    m = methods.get(method)
    given = {k: v for k, v in options.items() if v is not None}
    stray = sorted(set(given) - set(m.options))
    if stray:
        readers = [name for name, other in methods.METHODS.items() if stray[0] in other.options]
        raise ValueError(f"{stray[0]} applies to method {', '.join(readers)}, not {method}")
    if given.get("similarity") is not None and given.get("ratio") is not None:
        raise ValueError("give similarity (a cosine threshold) or ratio (a fraction of pairs), not both")
    for name, (lo, hi, what) in _RANGES.items():
        value = given.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not lo <= value <= hi or (name == "target" and value == 0)):
            bound = "(0, 1]" if name == "target" else f"[{lo:g}, {hi:g}]"
            raise ValueError(f"{name} is {what}, in {bound}; got {value!r}")
    if given.get("score") is not None and given["score"] not in SCORERS:
        raise ValueError(f"score must be one of {', '.join(SCORERS)}; got {given['score']!r}")
    mix = given.get("mix")
    if mix is not None and (not isinstance(mix, dict) or set(mix) - set(MIX_KEYS) or mix.get("score") not in SCORERS):
        raise ValueError(f"mix is a second ranking: {{'score': one of {', '.join(SCORERS)}, 'layer': a layer index, "
                         f"'heads': query heads}} (layer and heads optional); got {mix!r}")
    counts = {**given, "mix layer": (mix or {}).get("layer")}
    for name, least, what in (("window", 1, "a number of tokens"), ("spread", 0, "a number of tokens"),
                              ("chunk", 1, "a number of tokens"),
                              ("score_layer", 0, "a layer index"), ("mix layer", 0, "a layer index")):
        value = counts.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{name} is {what} >= {least}, got {value!r}")
    if given.get("words") is not None and not isinstance(given["words"], bool):
        raise ValueError(f"words is True or False, got {given['words']!r}")
    if given.get("words") and given.get("chunk", 1) < 2:
        raise ValueError("words keeps words whole up to `chunk` tokens: give chunk >= 2 with it (e.g. 48)")
    return {**m.options, **given}


def check_settings(s: MergeSettings, num_layers: int, num_heads: int) -> None:
    cutoffs = s.cutoffs
    if not cutoffs or any(isinstance(c, bool) or not isinstance(c, int) for c in cutoffs):
        raise ValueError(f"layer_cutoff must be an integer or a list of integers, got {s.layer_cutoff!r}")
    for c in cutoffs:
        if not 0 <= c < num_layers:
            raise ValueError(f"layer_cutoff must be in 0..{num_layers - 1} (this model has {num_layers} layers), "
                             f"got {c}")
    if list(cutoffs) != sorted(set(cutoffs)):
        raise ValueError(f"several layer cutoffs must be strictly increasing, got {list(cutoffs)}")
    check_keeps(s.keep_start, s.keep_end)
    if s.positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}; got {s.positions!r}")
    if s.cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}; got {s.cache!r}")
    s.options  # noqa: B018  (checks the method and its options)
    if s.score_layer is not None and (len(cutoffs) > 1 or s.score_layer > cutoffs[0]):
        raise ValueError(f"score_layer ranks tokens for one cutoff, at or before it: in 0..{cutoffs[0]} with one "
                         f"layer_cutoff; got {s.score_layer} with {cutoff_label(s.layer_cutoff)}")
    if s.words and len(cutoffs) > 1:
        raise ValueError(f"words follows the prompt's own tokens: one layer_cutoff; got {cutoff_label(s.layer_cutoff)}")
    if s.mix is not None and (len(cutoffs) > 1 or s.mix.get("layer", 0) > cutoffs[0]):
        raise ValueError(f"mix ranks tokens for one cutoff, at a layer at or before it: in 0..{cutoffs[0]} with one "
                         f"layer_cutoff; got layer {s.mix.get('layer')} with {cutoff_label(s.layer_cutoff)}")
    for term in s.terms(cutoffs[0]):
        if term.heads is not None and (not term.heads or any(isinstance(h, bool) or not isinstance(h, int)
                                                             or not 0 <= h < num_heads for h in term.heads)):
            raise ValueError(f"heads are query heads in 0..{num_heads - 1}; got {list(term.heads)!r}")


# -- grids and names ------------------------------------------------------------------------------------------------

def cutoff_grid(num_layers: int, fractions) -> list[int]:
    """The cutoffs after which these fractions of the depth have run (layer round(f·L) - 1), within 0..L-1."""
    return sorted({min(num_layers - 1, max(0, round(num_layers * f) - 1)) for f in fractions})


def default_settings(num_layers: int) -> dict:
    """For a model with no tuned defaults, a setting that needs no calibration: SmolLM2's recipe with every head.

    Prune after half the depth to 0.3 of the tokens, ranked by the last 8 tokens' attention over all heads and, as
    the mix, all heads' key norms at layer 2 (numbers asked about later), kept in whole words of up to 48 tokens
    so that a value spelled in many tokens (a UUID in 36) keeps all its pieces; it reads the model's tokenizer for
    them. The ideal prefill speedup is 1.55-1.64x on the four built-ins at 1024-4096 tokens (`bench.ideal`).
    """
    cutoff = cutoff_grid(num_layers, [0.5])[0]
    return dict(method="prune", layer_cutoff=cutoff, target=0.3, window=8, spread=8, chunk=48, words=True,
                keep_start=4, keep_end=32, mix={"score": "keynorm", "layer": min(2, cutoff)})


def cutoff_label(layer_cutoff) -> str:
    return ",".join(map(str, layer_cutoff)) if isinstance(layer_cutoff, (list, tuple)) else str(layer_cutoff)


def label(kwargs: dict) -> str:
    """A short name for patch keyword arguments: 'guided @13 keep 4+32 target=0.25'."""
    kw = dict(kwargs)
    method = kw.pop("method", "slerp")
    cut = kw.pop("layer_cutoff", None)
    ks, ke = kw.pop("keep_start", 0), kw.pop("keep_end", 0)
    kw = {k: v for k, v in kw.items() if v is not None and not (k == "positions" and v == "original")}
    if "mix" in kw:  # keynorm@2:0 (its scorer, layer and heads)
        m = kw["mix"]
        kw["mix"] = m["score"] + (f"@{m['layer']}" if "layer" in m else "") + (
            f":{cutoff_label(m['heads'])}" if m.get("heads") is not None else "")
    text = method + ("" if cut is None else f" @{cutoff_label(cut)}") + (f" keep {ks}+{ke}" if ks or ke else "")
    return text + "".join(f" {k}={cutoff_label(v)}" for k, v in sorted(kw.items()))


# -- the command line ---------------------------------------------------------------------------------------------

def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def mix_term(text: str) -> dict:
    """'keynorm@2:0,1' -> {"score": "keynorm", "layer": 2, "heads": [0, 1]}."""
    rest, _, heads = text.partition(":")
    score, _, layer = rest.partition("@")
    try:
        return {"score": score, **({"layer": int(layer)} if layer else {}), **({"heads": ints(heads)} if heads else {})}
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected SCORE[@LAYER][:HEADS], e.g. keynorm@2:0; got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The merge flags every command that merges takes: one setting, over the model's defaults and --config."""
    g = p.add_argument_group("merging (defaults: the model's own, see `slerpmerge models`)")
    g.add_argument("--layer-cutoff", type=ints, help="merge after this decoder layer (0-based); '6,15': two stages")
    g.add_argument("--keep-start", type=int, help="first tokens kept unmerged")
    g.add_argument("--keep-end", type=int, help="last tokens kept unmerged")
    g.add_argument("--positions", choices=POSITIONS, help="positions the later layers see")
    g.add_argument("--method", choices=list(methods.METHODS), help="how the sequence is shortened")
    g.add_argument("--cache", choices=CACHES, help="merged KV cache, or re-merge everything every step")
    g.add_argument("--similarity", type=float, help="pair methods: merge only pairs at least this similar")
    g.add_argument("--ratio", type=float, help="pair methods: merge only this fraction of pairs")
    g.add_argument("--target", type=float, help="scored methods: fraction of tokens left after the cutoff")
    g.add_argument("--protect", type=float, help="guided methods: share of those kept exact")
    g.add_argument("--score", choices=list(SCORERS), help="scored methods: how tokens are ranked ('keynorm', "
                   "'heavy' and 'expected' need no question: for a context asked about later, docs/settings.md)")
    g.add_argument("--score-layer", type=int, help="scored methods: rank tokens at this layer (default: the cutoff)")
    g.add_argument("--mix", type=mix_term, help="scored methods: a second ranking that shares the kept tokens, "
                   "SCORE[@LAYER][:HEADS], e.g. keynorm@2:0 (docs/settings.md)")
    g.add_argument("--window", type=int, help="scored methods: last tokens whose attention scores")
    g.add_argument("--heads", type=ints, help="scored methods: query heads that score (from a calibration)")
    g.add_argument("--spread", type=int, help="scored methods: a token scores the best within this many of it")
    g.add_argument("--chunk", type=int, help="scored methods: keep or drop runs of this many tokens whole")
    g.add_argument("--words", action="store_true", default=None,
                   help="scored methods: runs of --chunk also end where words do (a value stays whole)")
    g.add_argument("--config", type=Path, help="JSON file of patch settings (from `slerpmerge tune`)")


def from_args(args, defaults: dict) -> dict:
    """``defaults``, overridden by --config, overridden by explicit flags. A --config or flag that names another
    method than the defaults' takes only their method-free part (cutoff, ends, positions, cache): the defaults'
    options (target, mix, window, ...) were chosen for their own method."""
    given = dict(read_config(args.config)) if args.config else {}
    for f in fields(MergeSettings):
        value = getattr(args, f.name, None)
        if f.name == "layer_cutoff" and value is not None and len(value) == 1:
            value = value[0]
        if value is not None:
            given[f.name] = value
    settings = dict(defaults)
    if given.get("method", settings.get("method", "slerp")) != settings.get("method", "slerp"):
        settings = {k: v for k, v in settings.items() if k not in OPTION_NAMES}
    settings.update(given)
    return settings


def read_config(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read settings from {path}: {e}") from None
