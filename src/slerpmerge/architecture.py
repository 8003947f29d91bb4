"""What slerpmerge reads from a model before hooking it: which architectures it drives, and each layer's kind."""

from __future__ import annotations

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
LAYER_TYPES = ("full_attention", "sliding_attention")  # the kinds of layer both adapters can shorten


def layer_types(config) -> list[str]:
    """Attention type of every decoder layer, as the model's forward chooses its masks."""
    types = getattr(config, "layer_types", None)
    if types is None:
        kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
        types = [kind] * config.num_hidden_layers
    return list(types)


def check_model(model) -> None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"slerpmerge cannot drive model type {model_type!r} ({type(model).__name__}); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} causal LMs"
        )
    decoder = getattr(model, "model", None)
    for part in ("layers", "rotary_emb", "norm"):
        if not hasattr(decoder, part):
            raise ValueError(f"{type(model).__name__} has no model.{part}: not a decoder slerpmerge can drive")
    attn = config._attn_implementation
    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {attn!r} is not supported; load the model with "
            f"attn_implementation in {ATTENTION_IMPLEMENTATIONS}"
        )
    if getattr(config, "use_bidirectional_attention", False) or not getattr(config, "is_causal", True):
        raise ValueError("slerpmerge needs causal attention; this model is configured bidirectional")
    unknown = set(layer_types(config)) - set(LAYER_TYPES)
    if unknown:
        raise ValueError(f"layer types {sorted(unknown)} are not supported; supported: {', '.join(LAYER_TYPES)}")
