"""Build a tiny, randomly initialised Llama checkpoint that both transformers and vLLM load.

The vLLM integration tests need a real model served by a real server, yet must not download weights. This
script writes one from nothing, deterministically (fixed seed), in a few seconds:

* ``config.json`` + ``model.safetensors``: a 2-layer ``LlamaForCausalLM`` in float32;
* ``tokenizer.json`` + ``tokenizer_config.json``: a character-level tokenizer (one token per printable ASCII
  character, newline and tab, plus ``<unk>``, ``<s>``, ``</s>``), built with the ``tokenizers`` library so every
  string round-trips exactly and a stop string always ends on a token boundary.

The weights are scaled up from the usual tiny initialisation so that next-token distributions are peaked rather
than uniform: sampled text then differs visibly between seeds, and logprobs span a useful range.

Usage: ``python3 scripts/make_tiny_llama.py OUT_DIR``
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
CHARACTERS = "".join(sorted(set(string.printable) - set("\r\x0b\x0c")))
MAX_POSITIONS = 512
SEED = 1234


def _vocab() -> dict[str, int]:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    return vocab


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tokenizer(out: Path) -> int:
    """Write a character-level fast tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models

    vocab = _vocab()
    # A BPE with no merges and no pre-tokenizer splits text into single characters; Fuse joins them back.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        # A plain chat template, so chat-judgement PRMs can be exercised against the server.
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return len(vocab)


def write_model(out: Path, vocab_size: int) -> None:
    """Write a seeded 2-layer Llama in float32 (head_dim 64, which every vLLM CPU attention path supports)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
        initializer_range=0.02,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Peaked output distributions: scale the unembedding so logits spread over several nats.
        model.lm_head.weight.normal_(mean=0.0, std=0.35)
        model.model.embed_tokens.weight.normal_(mean=0.0, std=1.0)
        # <unk> and <s> get zero logits so sampled text rarely holds tokens that detokenize to nothing; a damped
        # </s> row keeps samples from ending after a handful of tokens.
        model.lm_head.weight[UNK_ID].zero_()
        model.lm_head.weight[BOS_ID].zero_()
        model.lm_head.weight[EOS_ID].mul_(0.25)
    torch.nn.Module.to(model, torch.float32)  # transformers' own to() is typed for other arguments
    model.save_pretrained(str(out), safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into (created if missing)")
    args = parser.parse_args()
    out: Path = args.out_dir
    if out.exists() and not out.is_dir():
        parser.error(f"out_dir {out} is a file; pass a folder to write the checkpoint into")
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(out)
    write_model(out, vocab_size)
    print(f"wrote tiny Llama (vocab {vocab_size}, max_len {MAX_POSITIONS}) to {out}")


if __name__ == "__main__":
    main()
