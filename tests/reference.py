"""An independent reference: the article's merge one token at a time, and a plain forward of the tiny Llama and
Gemma 3 models written from their weights, in float64, one prompt at a time, with per-layer caches.

Nothing here calls slerpmerge or a transformers forward: embeddings, norms, rotary embeddings, attention with its
causal and sliding-window masks, the MLPs and the head are written out from the configs and the weights.
"""

from __future__ import annotations

import math

import torch


# -- the article's merge, literally ------------------------------------------------------------------------------

def article_merge(tokens: list, keep_start: int, keep_end: int, combine) -> list:
    """tokens: [(vector, position)] of one row. The first keep_start and last keep_end stay; the m between are
    framed by a null at each end (one more before the last when m + 2 is odd) and paired; a pair with a null
    gives back its token, any other pair becomes ``combine(a, b)`` at the pair's mean position (the later one's
    position when ``combine`` is None: the later token is kept)."""
    n = len(tokens)
    ks = min(keep_start, n)
    ke = min(keep_end, n - ks)
    head, middle, tail = tokens[:ks], tokens[ks:n - ke], tokens[n - ke:]
    if len(middle) >= 3:
        framed = [None, *middle, None]
        if len(framed) % 2:
            framed.insert(len(framed) - 2, None)  # one more null, just before the last real token
        merged = []
        for a, b in zip(framed[0::2], framed[1::2]):
            if a is None or b is None:
                merged.append(a if b is None else b)
            elif combine is None:
                merged.append(b)
            else:
                merged.append((combine(a[0], b[0]), (a[1] + b[1]) / 2))
        middle = merged
    return head + middle + tail


def slerp64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SLERP at t = 0.5 by its textbook formula, in float64 (linear where the angle is ill-conditioned)."""
    a, b = a.double(), b.double()
    cos = float(a @ b / (a.norm() * b.norm()))
    if abs(cos) > 0.9995:
        return (a + b) / 2
    theta = math.acos(cos)
    return (math.sin(theta / 2) * a + math.sin(theta / 2) * b) / math.sin(theta)


# -- a plain forward -----------------------------------------------------------------------------------------------

class Reference:
    """The tiny model's forward from its weights (Llama or Gemma 3 text), float64."""

    def __init__(self, model):
        self.config = c = model.config
        self.w = {k: v.detach().double() for k, v in model.state_dict().items()}
        self.gemma = c.model_type == "gemma3_text"
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // self.heads
        self.types = list(getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers)
        self.window = getattr(c, "sliding_window", None)
        self.scaling = (c.query_pre_attn_scalar if self.gemma else self.head_dim) ** -0.5

    def theta(self, layer_type: str) -> float:
        rope = self.config.rope_parameters
        return (rope[layer_type] if layer_type in rope else rope)["rope_theta"]

    def norm(self, x, name):
        w = self.w[name]
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return y * (1 + w) if self.gemma else y * w

    def rotate(self, x, position: float, layer_type: str):
        """x (heads, d) at one (possibly fractional) position."""
        d = self.head_dim
        inv = 1.0 / self.theta(layer_type) ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.cat([position * inv, position * inv])
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * angles.cos() + torch.cat([-x2, x1], -1) * angles.sin()

    def embed(self, token: int):
        e = self.w["model.embed_tokens.weight"][token]
        return e * torch.tensor(self.config.hidden_size ** 0.5, dtype=torch.float32).double() if self.gemma else e

    def layer(self, i: int, x, position: float, cache: list, true: float | None = None):
        """One token x (D,) through layer i at `position`, appending its key, value and true position `true` (by
        default `position`) to `cache` (a list of (k, v, true)) and attending to the cache's entries (on a sliding
        layer those whose true position is less than `window` before this token's)."""
        true = position if true is None else true
        p = f"model.layers.{i}."
        kind = self.types[i]
        h = self.norm(x, p + "input_layernorm.weight")
        q = (self.w[p + "self_attn.q_proj.weight"] @ h).view(self.heads, self.head_dim)
        k = (self.w[p + "self_attn.k_proj.weight"] @ h).view(self.kv_heads, self.head_dim)
        v = (self.w[p + "self_attn.v_proj.weight"] @ h).view(self.kv_heads, self.head_dim)
        if self.gemma:
            q, k = self.norm(q, p + "self_attn.q_norm.weight"), self.norm(k, p + "self_attn.k_norm.weight")
        q, k = self.rotate(q, position, kind), self.rotate(k, position, kind)
        cache.append((k, v, true))
        seen = [e for e in cache if true - e[2] < self.window] if kind == "sliding_attention" else cache
        keys = torch.stack([e[0] for e in seen], 1)  # (kv_heads, T, d)
        values = torch.stack([e[1] for e in seen], 1)
        group = self.heads // self.kv_heads
        out = []
        for head in range(self.heads):
            kv = head // group
            weights = torch.softmax(keys[kv] @ q[head] * self.scaling, 0)
            out.append(weights @ values[kv])
        attn = self.w[p + "self_attn.o_proj.weight"] @ torch.cat(out)
        if self.gemma:
            attn = self.norm(attn, p + "post_attention_layernorm.weight")
            x = x + attn
            h = self.norm(x, p + "pre_feedforward_layernorm.weight")
        else:
            x = x + attn
            h = self.norm(x, p + "post_attention_layernorm.weight")
        gate = self.w[p + "mlp.gate_proj.weight"] @ h
        act = torch.nn.functional.gelu(gate, approximate="tanh") if self.gemma else torch.nn.functional.silu(gate)
        mlp = self.w[p + "mlp.down_proj.weight"] @ (act * (self.w[p + "mlp.up_proj.weight"] @ h))
        if self.gemma:
            mlp = self.norm(mlp, p + "post_feedforward_layernorm.weight")
        return x + mlp

    def logits(self, x):
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return head @ self.norm(x, "model.norm.weight")


def merged_generation(ref: Reference, ids: list[int], cutoffs: list[int], keep_start: int, keep_end: int,
                      positions: str, new_tokens: int):
    """Prefill one prompt token by token, merging after each cutoff with the article's rule; then decode greedily.
    Returns the prefill's logits (S', V) at the merged positions and each decode step's logits (V,)."""
    layers = ref.config.num_hidden_layers
    caches = [[] for _ in range(layers)]
    shifts = [0.0] * layers  # true position - position a layer sees
    seq = [(ref.embed(t), float(p)) for p, t in enumerate(ids)]  # (hidden, true mean position)
    seen = [p for _, p in seq]  # positions the current layers see
    stage_shift = 0.0
    for i in range(layers):
        seq = [(ref.layer(i, h, at, caches[i], p), p) for (h, p), at in zip(seq, seen)]
        shifts[i] = stage_shift
        if i in cutoffs:
            seq = article_merge(seq, keep_start, keep_end, slerp64)
            if positions == "reindex":
                seen = [float(j) for j in range(len(seq))]
                stage_shift = round(seq[-1][1]) - seen[-1]
            else:
                seen = [p for _, p in seq]
    prefill = torch.stack([ref.logits(h) for h, _ in seq])
    steps, token = [], int(prefill[-1].argmax())
    for n in range(new_tokens):
        position = float(len(ids) + n)
        x = ref.embed(token)
        for i in range(layers):
            x = ref.layer(i, x, position - shifts[i], caches[i], position)
        steps.append(ref.logits(x))
        token = int(steps[-1].argmax())
    return prefill, steps
