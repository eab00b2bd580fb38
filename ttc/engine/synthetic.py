"""Tiny randomly initialised checkpoints, written exactly as real ones are (transformers' ``save_pretrained``).

Tests and benchmarks need real model folders (config.json, safetensors, tokenizer.json) without downloading
anything. A character-level tokenizer keeps the vocabulary small, so these models load and run in milliseconds
while exercising every path a real checkpoint does. Needs ``transformers`` (the ``local`` extra).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import torch

Family = Literal["llama", "qwen2"]

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")
BOS_ID, EOS_ID = 0, 1
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"


def char_tokenizer(characters: str = CHARACTERS) -> Any:
    """A ``tokenizers.Tokenizer`` with one token per character and ``<s>``, ``</s>``, ``<unk>`` specials."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in dict.fromkeys(characters):
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def build_checkpoint(
    folder: str | Path,
    *,
    family: Family = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_positions: int = 2048,
    tie_word_embeddings: bool = True,
    rope_parameters: dict[str, Any] | None = None,
    initializer_range: float = 0.02,
    eos_token_id: int | None = EOS_ID,
    seed: int = 0,
) -> Path:
    """Write a seeded random ``family`` model with a character tokenizer to ``folder``; return the folder.

    ``eos_token_id=None`` gives a model that never stops early (benchmarks want fixed-length generations).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = char_tokenizer()
    options: dict[str, Any] = dict(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        bos_token_id=BOS_ID,
        eos_token_id=eos_token_id,
    )
    if rope_parameters is not None:
        options["rope_parameters"] = rope_parameters
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "llama":
            model: Any = LlamaForCausalLM(LlamaConfig(**options))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(**options))
        _perturb_defaults(model, initializer_range)
    model.save_pretrained(root)
    tokenizer.save(str(root / "tokenizer.json"))
    return root


def _perturb_defaults(model: Any, std: float) -> None:
    """Biases start at zero and norm gains at one; randomise both so a forward that ignored them would show."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, std)
            elif name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.1)


__all__ = ["BOS_ID", "EOS_ID", "build_checkpoint", "char_tokenizer"]
