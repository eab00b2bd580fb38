"""LocalBackend with the tokenizers real checkpoints ship (SentencePiece-style, Unigram), not the mini models'
character one: completion text, stop strings and unknown characters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from ttc.backends.local import LocalBackend
from ttc.engine.synthetic import EOS_ID, build_checkpoint
from ttc.errors import ConfigError
from ttc.types import Sampling

SENTENCEPIECE = ["<s>", "</s>", "<unk>", "▁Hello", "▁world", "▁The", "▁answer", "▁is", "▁", "4", "2"]


def _sentencepiece_tokenizer() -> Any:
    """A Llama-2-style tokenizer: ▁ for spaces, and a text's first space stripped when decoding."""
    from tokenizers import Tokenizer, decoders, models

    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(SENTENCEPIECE)}, merges=[],
                                     unk_token="<unk>"))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(SENTENCEPIECE[:3])
    return tokenizer


def _checkpoint(folder: Path, tokenizer: Any) -> Path:
    """A tiny Llama whose tokenizer.json is ``tokenizer`` (its vocabulary fits the model's, and its EOS_ID is
    '</s>')."""
    assert tokenizer.id_to_token(EOS_ID) == "</s>"
    root = build_checkpoint(folder, family="llama", seed=4)
    tokenizer.save(str(root / "tokenizer.json"))
    return root


def _script(backend: LocalBackend, tokens: Sequence[int]) -> None:
    """Makes the model choose ``tokens`` in turn (then the last one again), whatever it reads."""
    vocab = backend.engine.config.vocab_size
    step = iter(range(1 << 30))

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = torch.full((*hidden.shape[:-1], vocab), -30.0)
        out[..., tokens[min(next(step), len(tokens) - 1)]] = 30.0
        return out

    backend.engine.model.logits = logits  # type: ignore[method-assign]


@pytest.mark.anyio
async def test_a_sentencepiece_completion_keeps_its_leading_space_and_finds_a_stop_starting_with_it(
        tmp_path: Path) -> None:
    """Decoded apart from its prompt, '▁The answer' read 'The answer' and the stop ' The' was never found."""
    ids = {p: i for i, p in enumerate(SENTENCEPIECE)}
    prompt = [ids["<s>"], ids["▁Hello"], ids["▁world"]]
    continuation = [ids[p] for p in ("▁The", "▁answer", "▁is", "▁", "4", "2", "</s>")]
    async with LocalBackend.from_pretrained(_checkpoint(tmp_path, _sentencepiece_tokenizer()), threads=1) as b:
        _script(b, continuation)
        [free] = await b.complete(prompt, 1, Sampling(max_tokens=20, temperature=0))
        assert (free.text, free.token_ids, free.finish_reason) == (" The answer is 42", tuple(continuation), "stop")
        assert (await b.detokenize(prompt + list(free.token_ids))).endswith(free.text)
        _script(b, continuation[1:])
        [stopped] = await b.complete([*prompt, ids["▁The"]], 1, Sampling(max_tokens=20, temperature=0,
                                                                           stop=(" is",)))
        assert (stopped.text, stopped.finish_reason) == (" answer is", "stop")
        _script(b, continuation)
        [stopped] = await b.complete(prompt, 1, Sampling(max_tokens=20, temperature=0, stop=(" The",)))
    assert (stopped.text, stopped.token_ids, stopped.finish_reason) == (" The", (ids["▁The"],), "stop")


@pytest.mark.anyio
async def test_a_stop_ending_inside_a_token_ends_the_text_and_keeps_the_token(tmp_path: Path) -> None:
    """The stop ' ans' ends inside '▁answer': the text was the whole token's, ' The answer', not ending with its
    stop as vLLM's text does."""
    ids = {p: i for i, p in enumerate(SENTENCEPIECE)}
    prompt = [ids["<s>"], ids["▁Hello"], ids["▁world"]]
    continuation = [ids[p] for p in ("▁The", "▁answer", "▁is", "</s>")]
    async with LocalBackend.from_pretrained(_checkpoint(tmp_path, _sentencepiece_tokenizer()), threads=1) as b:
        _script(b, continuation)
        [stopped] = await b.complete(prompt, 1, Sampling(max_tokens=20, temperature=0, stop=(" ans",)))
    assert (stopped.text, stopped.token_ids, stopped.finish_reason) == (" The ans", tuple(continuation[:2]), "stop")


def _unigram_tokenizer() -> Any:
    """A SentencePiece-unigram tokenizer: its model has no unknown token by name, only an id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = [("<s>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(c, -3.0) for c in "abcdefhilnorw"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return tokenizer


@pytest.mark.anyio
async def test_a_unigram_vocabulary_refuses_characters_it_lacks(tmp_path: Path) -> None:
    """Unigram models name no unknown token, so 'café' was read as 'caf<unk>' without a word."""
    async with LocalBackend.from_pretrained(_checkpoint(tmp_path, _unigram_tokenizer()), threads=1) as b:
        ids = await b.tokenize("hello world")
        assert 2 not in ids and await b.detokenize(ids) == "hello world"
        with pytest.raises(ConfigError, match=r"has no token for 'H', 'é' in 'Hello café'"):
            await b.tokenize("Hello café")


@pytest.mark.anyio
async def test_a_stop_inside_a_token_that_starts_a_character_leaves_no_partial_character_in_the_text(
        tmp_path: Path) -> None:
    """'Ġä¸' (a space and two of the three bytes of 中) completes the stop ' ' and starts 中: the completion
    keeps the token, and its text ended in U+FFFD, the character's first bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = ["<s>", "</s>", "i", "s", ":", "Ġä¸", "Ń"]
    ids = {p: i for i, p in enumerate(pieces)}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(pieces[:2])
    continuation = [ids["Ġä¸"], ids["Ń"], ids["</s>"]]
    async with LocalBackend.from_pretrained(_checkpoint(tmp_path, tokenizer), threads=1) as b:
        prompt = [ids["i"], ids["s"], ids[":"]]
        _script(b, continuation)
        [free] = await b.complete(prompt, 1, Sampling(max_tokens=5, temperature=0))
        assert free.text == " 中"
        _script(b, continuation)
        [stopped] = await b.complete(prompt, 1, Sampling(max_tokens=5, temperature=0, stop=(" ",)))
    assert (stopped.text, stopped.token_ids, stopped.finish_reason) == (" ", (ids["Ġä¸"],), "stop")
