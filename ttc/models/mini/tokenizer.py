"""The character-level tokenizer shared by the bundled mini reasoner, draft and process reward model.

One character is one token, so arithmetic is never split into odd multi-digit pieces and a step boundary is
always a token boundary. The vocabulary is fixed (64 entries) and written as a ``tokenizer.json`` built with the
``tokenizers`` library, so ``transformers.AutoTokenizer`` and a vLLM server load it unchanged.

The step tag and the two judgement tokens are characters that the synthetic benchmark never writes, so the
process reward model can put them after a step without colliding with arithmetic (``+`` and ``-`` appear in
every solution, which is why they are not the judgement tokens here).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

PAD = "<pad>"
BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

STEP_TAG = "¶"
GOOD_TOKEN = "✓"
BAD_TOKEN = "✗"

CHARACTERS = (
    "\n "
    + string.digits
    + "+-*/=.?,:()"
    + "ABEHKMST"
    + string.ascii_lowercase
    + STEP_TAG
    + GOOD_TOKEN
    + BAD_TOKEN
)
"""Every ordinary token. Upper case is limited to the initials the benchmark uses, to keep the vocabulary at 64."""

VOCAB: tuple[str, ...] = (*SPECIAL_TOKENS, *CHARACTERS)
VOCAB_SIZE = len(VOCAB)


def build_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` that maps each character to its own id and prepends BOS on encode.

    A BPE model without merges splits any text into single characters, and the ``Fuse`` decoder joins them
    back without inserting spaces, which is what makes ``decode(encode(s)) == s`` hold for every string made
    of vocabulary characters.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    tokenizer = Tokenizer(models.BPE(vocab={tok: i for i, tok in enumerate(VOCAB)}, merges=[], unk_token=UNK))
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS])
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, VOCAB.index(BOS))]
    )
    return tokenizer


def tokenizer_config(max_length: int = 512) -> dict[str, Any]:
    """``tokenizer_config.json``: special tokens, no clean-up of spaces on decode (spaces are data here), and the
    model's own context (transformers truncates and warns at ``model_max_length``)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }


def save_tokenizer(directory: Path, max_length: int = 512) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (for a model of ``max_length`` positions)."""
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(max_length), indent=2) + "\n")


def encode(text: str) -> list[int]:
    """Token ids of ``text`` without BOS: a dictionary lookup, for training loops that build sequences by hand.

    Raises KeyError on a character outside the vocabulary, which for benchmark text is a bug worth seeing.
    """
    return [_INDEX[ch] for ch in text]


_INDEX = {tok: i for i, tok in enumerate(VOCAB)}

__all__ = [
    "BAD_TOKEN",
    "BOS",
    "CHARACTERS",
    "EOS",
    "GOOD_TOKEN",
    "PAD",
    "SPECIAL_TOKENS",
    "STEP_TAG",
    "UNK",
    "VOCAB",
    "VOCAB_SIZE",
    "build_tokenizer",
    "encode",
    "save_tokenizer",
    "tokenizer_config",
]
