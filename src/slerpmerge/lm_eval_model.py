"""slerpmerge as an lm-evaluation-harness model: ``slerpmerge lm-eval run --model slerpmerge ...``.

`SlerpmergeLM` is the harness's own Hugging Face backend (`HFLM`) given a model that slerpmerge loaded and
patched; everything else (batching, caching, chat templates, generation) stays the harness's. Importing this
module registers it under the name "slerpmerge" (lm-eval 0.4 reads no plugin entry points, so the
``slerpmerge lm-eval`` command imports it and hands the rest of its arguments to lm-eval's command line).

Model arguments: ``pretrained`` (a built-in name or a local model folder or .gguf file), every `patch` setting
(the fields of `MergeSettings`: ``method, layer_cutoff, keep_start, target, window, heads, spread, chunk,
words``, ...; lists as ``heads=[1,3]``; a ``mix`` through ``config``) and ``config=FILE`` (a `slerpmerge tune` file), over the model's
defaults as the CLI takes them; ``method=base`` (or ``none``) evaluates the model unpatched. Also ``dtype``
(default float32), ``cache_dir``, and any argument of `HFLM` (``batch_size``, ``max_length``, ...).

How each request type is kept honest:

    loglikelihood          one forward pass over context + continuation (the harness's own shape), with
                           keep_end raised for the call to cover the longest continuation, so every scored
                           token is its own position, never merged. The harness pads batches on the right and
                           gives the model no attention mask; this backend finds each row's length, runs the
                           batch left-padded with a mask and puts the kept tail's logits back at the positions
                           the harness reads.
    loglikelihood_rolling  refused while patched: it scores every token, and no token can be scored exactly
                           once merged. Run perplexity tasks with method=base.
    generate_until         the patched model's own ``generate``, at the setting's keep_end (cache=merged only).

With a scored method the tokens kept are chosen by the attention of the last `window` tokens, which in one pass
over context + continuation include the first continuation tokens: a setting is measured on the whole sequence
it reads, as the harness measures any model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import fields
from types import SimpleNamespace

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from . import methods, settings
from .models import BUILTINS, DEFAULT_MODEL, load
from .patching import patch, unpatch
from .settings import MergeSettings

log = logging.getLogger("lm_eval.models.slerpmerge")  # under the harness's logger: its handler and verbosity

PATCH_ARGS = tuple(f.name for f in fields(MergeSettings))
BASE = ("base", "none")  # method values that mean: the model unpatched
LIST_ARGS = ("layer_cutoff", "heads")


def _int_list(value) -> list[int] | None:
    """A list argument as the harness hands it: [1, 3] (bracketed), 7 (one), or a string '1;3' / '1:3'."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return settings.ints(str(value).replace(";", ",").replace(":", ","))


def merge_settings(pretrained: str, num_layers: int, given: dict, config: str | None) -> dict | None:
    """The model's defaults, overridden by ``config``, overridden by the explicit model arguments (the CLI's
    order, through its own `settings.from_args`); None for the base model."""
    if "method" in given and (given["method"] is None or str(given["method"]).lower() in BASE):
        return None
    defaults = (BUILTINS[pretrained].defaults if pretrained in BUILTINS
                else settings.default_settings(num_layers))
    args = {k: given.get(k) for k in PATCH_ARGS}
    for k in LIST_ARGS:
        args[k] = _int_list(args[k])
    chosen = settings.from_args(SimpleNamespace(config=config, **args), defaults)
    return None if str(chosen.get("method", "slerp")).lower() in BASE else chosen


def _dtype(dtype) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float32  # what slerpmerge.load and every measurement use
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))


def _device(device: str | None) -> str:
    """As HFLM treats a device name it has no such device for (the harness's default is cuda:0): the CPU."""
    if device and (torch.cuda.is_available() or not device.startswith("cuda")):
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@register_model("slerpmerge")
class SlerpmergeLM(HFLM):
    """The harness's HF backend on a model loaded by `slerpmerge.load` and patched by `slerpmerge.patch`."""

    def __init__(self, pretrained: str = DEFAULT_MODEL, config: str | None = None, cache_dir: str | None = None,
                 dtype: str | torch.dtype | None = "float32", device: str | None = None, tokenizer: str | None = None,
                 **kwargs) -> None:
        # ``tokenizer`` is for the tasks that size their prompts with one (RULER reads it from the model
        # arguments); the model always reads with the tokenizer that `load` gives it.
        del tokenizer
        self.merge: dict | None = None
        self._inputs: set[tuple[int, ...]] | None = None  # the inputs of the loglikelihood call under way
        self._keep = 0  # keep_end in force during that call
        self._logged: set[int] = set()
        given = {k: kwargs.pop(k) for k in PATCH_ARGS if k in kwargs}
        model, tokenizer = load(str(pretrained), dtype=_dtype(dtype), cache=cache_dir)
        model.to(_device(device))
        merge = merge_settings(str(pretrained), model.config.num_hidden_layers, given, config)
        if merge is not None:
            patch(model, **merge)  # checks the setting before the harness does any work
        super().__init__(pretrained=model, tokenizer=tokenizer, **kwargs)
        self.merge = merge
        log.info("slerpmerge: %s %s", pretrained, "base (unpatched)" if merge is None else settings.label(merge))

    # -- loglikelihood ---------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """The harness's own loop, with keep_end covering every continuation and the inputs noted, so that
        `_model_call` can tell each row's length."""
        if self.merge is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        if self.batch_size == "auto":
            raise ValueError("slerpmerge: batch_size=auto is not supported on a patched model; give a number")
        need = max((len(cont) for _, _, cont in requests), default=0)
        # The harness feeds (context + continuation)[:-1], cut to max_length on the left: the continuation's
        # log-probabilities sit at the last len(continuation) positions of that input.
        inputs = {tuple((ctx + cont)[-(self.max_length + 1):][:-1]) for _, ctx, cont in requests}
        with self._keeping(need):
            self._inputs = inputs
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            finally:
                self._inputs = None

    @contextlib.contextmanager
    def _keeping(self, need: int) -> Iterator[None]:
        """Patched with keep_end >= ``need`` for the block (the scoring window of a scored method unchanged),
        and back to the setting after."""
        keep = max(self.merge.get("keep_end", 0), need)
        self._keep = keep
        if keep == self.merge.get("keep_end", 0):
            yield
            return
        raised = {**self.merge, "keep_end": keep}
        if methods.get(raised.get("method", "slerp")).scored and raised.get("window") is None:
            raised["window"] = MergeSettings.make(**self.merge).score_window
        if keep not in self._logged:
            self._logged.add(keep)
            log.warning("slerpmerge: keep_end raised from %d to %d for loglikelihood requests, so that every "
                        "continuation token is scored unmerged (%s)", self.merge.get("keep_end", 0), keep,
                        settings.label(raised))
        unpatch(self.model)
        patch(self.model, **raised)
        try:
            yield
        finally:
            unpatch(self.model)
            patch(self.model, **self.merge)

    def _row_length(self, row: list[int]) -> int:
        """The real length of one right-padded row: the harness pads with id 0, so the length is the one whose
        prefix is one of the call's inputs with only zeros after it."""
        end = len(row)
        candidates = []
        while True:
            if tuple(row[:end]) in self._inputs:
                candidates.append(end)
            if end == 0 or row[end - 1] != 0:
                break
            end -= 1
        if len(candidates) != 1:
            raise ValueError("slerpmerge: cannot tell a row's padding from its trailing token id 0 "
                             f"({len(candidates)} lengths fit); run with batch_size=1")
        return candidates[0]

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, P, vocab) at the harness's right-padded positions. Patched: the rows run left-padded with
        a mask and true position ids; the last keep_end logits of each row (its unmerged tail) go back to that
        row's last real positions, and every other position is NaN, which nothing may read."""
        if self.merge is None or self._inputs is None or attn_mask is not None:
            return super()._model_call(inps, attn_mask, labels)
        batch, width = inps.shape
        # A batch of one has no padding; otherwise find each row's length among the call's inputs.
        rows = [width] if batch == 1 else [self._row_length(r) for r in inps.tolist()]
        lengths = torch.tensor(rows, device=inps.device)
        cols = torch.arange(width, device=inps.device)
        real = cols[None] >= (width - lengths)[:, None]  # (B, P) left-padded
        source = (cols[None] - (width - lengths)[:, None]).clamp(min=0)
        ids = torch.where(real, inps.gather(1, source), self.tokenizer.pad_token_id or 0)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        keep = min(self._keep, width)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            tail = self.model(input_ids=ids, attention_mask=real.long(), position_ids=positions,
                              logits_to_keep=keep).logits  # (B, keep, V): the last keep real tokens, unmerged
        out = tail.new_full((batch, width, tail.shape[-1]), float("nan"))
        for i, n in enumerate(lengths.tolist()):
            m = min(keep, n)
            out[i, n - m:n] = tail[i, tail.shape[1] - m:]
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The harness's generation on the patched model; refused for cache=recompute, which the harness's
        explicit use_cache=True would silently turn into the merged cache."""
        if self.merge is not None and self.merge.get("cache") == "recompute":
            raise ValueError("slerpmerge: cache=recompute cannot generate through the harness (it asks for a KV "
                             "cache); use cache=merged, or loglikelihood tasks only")
        return super().generate_until(requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """Refused while patched: a rolling loglikelihood scores every token of every window."""
        if self.merge is not None:
            raise ValueError("slerpmerge: loglikelihood_rolling (perplexity tasks) scores every token, and a "
                             "patched model cannot score merged tokens exactly; run these tasks with "
                             "method=base")
        return super().loglikelihood_rolling(requests, disable_tqdm)
