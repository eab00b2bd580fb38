"""Incremental detokenization (including characters split across byte tokens) and stop strings."""

from __future__ import annotations

from typing import Any

from ttc.engine.detokenizer import IncrementalDetokenizer
from ttc.engine.synthetic import char_tokenizer


def _byte_level_tokenizer() -> Any:
    """A byte-level BPE with no merges: every UTF-8 byte is its own token, so é and emoji span several."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_streamed_text_equals_full_decode_and_never_shows_partial_characters() -> None:
    tokenizer = _byte_level_tokenizer()
    text = "héllo wörld 😀 ok"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)  # multi-byte characters really are split
    detok = IncrementalDetokenizer(tokenizer)
    for i, token in enumerate(ids):
        detok.push(token)
        assert "\ufffd" not in detok.text
        assert tokenizer.decode(ids[: i + 1]).startswith(detok.text)
    assert detok.text == text


def test_stop_string_is_found_when_completed_across_tokens() -> None:
    tokenizer = char_tokenizer()
    detok = IncrementalDetokenizer(tokenizer, stops=["\n\n", "The answer"])
    pushed = 0
    for token in tokenizer.encode("so The answer is").ids:
        pushed += 1
        if (hit := detok.push(token)) is not None:
            break
    assert hit == "The answer"
    assert detok.text == "so The answer"
    assert pushed == len("so The answer")


def test_a_stop_is_found_by_the_token_that_completes_it_though_that_token_starts_a_character() -> None:
    """'Ġä¸' (a space and two of the three bytes of 中) completes 'is: ' and starts 中: the stop was found a
    token late, and never where the sequence ended before the character did."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab |= {"Ġä": len(vocab), "Ġä¸": len(vocab) + 1}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "ä"), ("Ġä", "¸")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    ids = tokenizer.encode("is: 中").ids
    assert [tokenizer.id_to_token(i) for i in ids] == ["i", "s", ":", "Ġä¸", "Ń"]
    detok = IncrementalDetokenizer(tokenizer, stops=["is: "])
    assert [detok.push(t) for t in ids[:4]] == [None, None, None, "is: "]
    assert detok.text == "is:"  # the streamed text still waits for the whole character
    assert detok.full_text() == tokenizer.decode(ids[:4]) == "is: \ufffd"
    assert detok.full_text(stopped=True) == "is: "  # a stopped text ends with its stop, not the character's bytes
    plain = IncrementalDetokenizer(tokenizer)
    for token in ids:
        plain.push(token)
    assert plain.text == "is: 中"


def test_earliest_ending_stop_wins_and_absent_stops_never_fire() -> None:
    tokenizer = char_tokenizer()
    detok = IncrementalDetokenizer(tokenizer, stops=["xyz", "b"])
    hits = [detok.push(t) for t in tokenizer.encode("aaxyb").ids]
    assert hits == [None, None, None, None, "b"]
    none = IncrementalDetokenizer(tokenizer, stops=["###"])
    assert all(none.push(t) is None for t in tokenizer.encode("## # ##").ids)


def test_special_tokens_add_no_text() -> None:
    tokenizer = char_tokenizer()
    detok = IncrementalDetokenizer(tokenizer)
    for t in [tokenizer.token_to_id("a"), 1, tokenizer.token_to_id("b")]:
        detok.push(t)
    assert detok.text == "ab"


def _sentencepiece_tokenizer() -> Any:
    """A Llama-2-style tokenizer (▁ for spaces, the text's first space stripped when decoding)."""
    from tokenizers import Tokenizer, decoders, models

    pieces = ["<unk>", "<s>", "</s>", "▁Hello", "▁world", "▁The", "▁answer", "▁is", "▁", "4", "2"]
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(pieces[:3])
    return tokenizer


def test_a_continuation_keeps_its_leading_space_after_the_prompt() -> None:
    """Decoded alone, '▁The' loses its space (the decoder strips a text's first one): 'The answer', and a stop
    string ' The' never matched. After the prompt's last tokens it reads as it does in the whole text."""
    tokenizer = _sentencepiece_tokenizer()
    ids = {tokenizer.id_to_token(i): i for i in range(tokenizer.get_vocab_size())}
    prompt = [ids["<s>"], ids["▁Hello"], ids["▁world"]]
    continuation = [ids["▁The"], ids["▁answer"], ids["▁is"], ids["▁"], ids["4"], ids["2"]]
    plain = IncrementalDetokenizer(tokenizer, prompt=prompt)
    for token in continuation:
        plain.push(token)
    assert plain.text == plain.full_text() == " The answer is 42"
    assert tokenizer.decode(prompt + continuation).endswith(plain.text)
    stopped = IncrementalDetokenizer(tokenizer, stops=[" The"], prompt=prompt)
    assert stopped.push(continuation[0]) == " The"
    assert stopped.copy().full_text() == " The"


def test_a_stopped_text_ends_with_its_earliest_stop_though_the_last_token_goes_on() -> None:
    """' ans' ends inside '▁answer': the stopped text kept the whole token, ' The answer', which does not end with
    its stop string (vLLM cuts it there, and keeps the token)."""
    tokenizer = _sentencepiece_tokenizer()
    ids = {tokenizer.id_to_token(i): i for i in range(tokenizer.get_vocab_size())}
    prompt = [ids["<s>"], ids["▁Hello"], ids["▁world"]]
    detok = IncrementalDetokenizer(tokenizer, stops=["swer", " an"], prompt=prompt)
    assert [detok.push(ids[p]) for p in ("▁The", "▁answer")] == [None, " an"]
    assert detok.generated == [ids["▁The"], ids["▁answer"]]
    assert (detok.full_text(), detok.full_text(stopped=True)) == (" The answer", " The an")


def test_a_prompt_ending_inside_a_character_gives_no_context() -> None:
    """A context whose text ends in U+FFFD would change once the continuation completes the character; with none
    whole within reach the continuation is decoded alone, as a byte-level text always could be."""
    tokenizer = _byte_level_tokenizer()
    ids = tokenizer.encode("中" * 10).ids
    detok = IncrementalDetokenizer(tokenizer, prompt=ids[:-1])
    detok.push(ids[-1])
    assert detok.full_text() == tokenizer.decode(ids[-1:])
    whole = IncrementalDetokenizer(tokenizer, prompt=tokenizer.encode("abc 中").ids)
    for token in tokenizer.encode("é!").ids:
        whole.push(token)
    assert whole.text == whole.full_text() == "é!"
