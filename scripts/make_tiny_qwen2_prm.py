"""Write a tiny, seeded, randomly initialised Qwen2 process reward model (Qwen2.5-Math-PRM layout) to a folder.

The checkpoint has the architecture vLLM serves as ``Qwen2ForProcessRewardModel``: a Qwen2 body and a two-layer
``score`` head with two classes, a character tokenizer with the ``<extra_0>`` step separator as one token, and a
chat template. It exercises ttc's pooling PRM path against a real server without downloading anything.

    python3 scripts/make_tiny_qwen2_prm.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SEP = "<extra_0>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    out: Path = parser.parse_args().out_dir
    if out.exists() and not out.is_dir():
        parser.error(f"out_dir {out} is a file; pass a folder to write the checkpoint into")
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    from ttc.engine.synthetic import char_tokenizer

    tokenizer = char_tokenizer()
    tokenizer.add_special_tokens([SEP])
    tokenizer.save(str(out / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "additional_special_tokens": [SEP], "chat_template": CHAT_TEMPLATE, "model_max_length": 1024,
    }, indent=2))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    body = Qwen2Model(config)
    weights = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    hidden = config.hidden_size
    weights["score.0.weight"] = torch.randn(hidden, hidden) * 0.2
    weights["score.0.bias"] = torch.zeros(hidden)
    weights["score.2.weight"] = torch.randn(2, hidden) * 0.5
    weights["score.2.bias"] = torch.zeros(2)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    data = config.to_dict()
    data.update(architectures=["Qwen2ForProcessRewardModel"], num_labels=2, torch_dtype="float32")
    (out / "config.json").write_text(json.dumps(data, indent=2))
    # vLLM's STEP pooling returns the head's output at the separator tokens only (pass as --pooler-config).
    pooler = {"tok_pooling_type": "STEP", "step_tag_id": tokenizer.token_to_id(SEP)}
    (out / "pooler_config.json").write_text(json.dumps(pooler, separators=(",", ":")))
    print(f"wrote tiny Qwen2 PRM (vocab {vocab}) to {out}")


if __name__ == "__main__":
    main()
