"""Tiny random models of every supported architecture, built from config: no download."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    AutoModelForCausalLM,
)

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=8),
    "qwen2": lambda: Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),
    "gemma3": lambda: Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=8,
                                       layer_types=["sliding_attention", "full_attention"] * 2),
    "phi3": lambda: Phi3Config(**COMMON),
}
ARCHITECTURES = tuple(CONFIGS)


def tiny_model(arch: str = "llama", attn: str = "sdpa", seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: generate exactly max_new_tokens
    return model


def tiny_tokenizer():
    """A word-level tokenizer over the tiny models' 128 ids ("w3" .. "w127"), padding on the left: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, COMMON["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side="left")


def piece_tokenizer():
    """A word-piece tokenizer over the same ids: "w3", "w6", ... begin a word, the others ("##w4") continue one, so
    that words span several tokens, as values do in real tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2,
             **{("" if begins(i) else "##") + f"w{i}": i for i in range(3, COMMON["vocab_size"])}}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side="left")


def begins(i: int) -> bool:
    """Whether id ``i`` begins a word in `piece_tokenizer` (the special ids 0-2 stand alone)."""
    return i < 3 or i % 3 == 0


def with_pieces(model, folder):
    """``model`` with `piece_tokenizer` saved in ``folder`` as its own (where a patched model finds its words)."""
    piece_tokenizer().save_pretrained(folder)
    model.name_or_path = model.config._name_or_path = str(folder)
    return model


def words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)
