"""Dataset loaders on the real benchmark files and on malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttc.bench.datasets import load_dataset
from ttc.errors import ConfigError


def test_gsm8k_gold_is_the_number_after_hashes() -> None:
    problems = load_dataset("gsm8k", limit=5)
    assert [p.gold for p in problems][:3] == ["18", "3", "70000"]  # the third is written "70,000" in the file
    assert all(p.dataset == "gsm8k" for p in problems)
    assert [p.index for p in problems] == list(range(5))


def test_math500_and_aime_fields() -> None:
    math = load_dataset("math500", limit=3)
    assert math[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert "level" in math[0].meta
    aime = load_dataset("aime24")
    assert len(aime) == 30 and all(p.gold and p.gold.isdigit() for p in aime)


def test_offset_and_limit_keep_file_positions() -> None:
    rows = load_dataset("gsm8k", offset=10, limit=3)
    assert [p.index for p in rows] == [10, 11, 12]


def test_bad_rows_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n\n{"question": "", "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"x.jsonl:3: no 'question'"):
        load_dataset(str(path))
    path.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"x.jsonl:1: no 'answer'"):
        load_dataset(str(path))
    with pytest.raises(ConfigError, match="limit must be an int >= 1"):
        load_dataset("gsm8k", limit=0)


def test_synthetic_is_deterministic_per_seed() -> None:
    a = load_dataset("synthetic", limit=20, seed=7)
    b = load_dataset("synthetic", limit=20, seed=7)
    c = load_dataset("synthetic", limit=20, seed=8)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in c]
    assert all(p.gold is not None for p in a)
    stateful = load_dataset("synthetic-stateful", limit=6, seed=1)
    assert len(stateful) == 6


def test_synthetic_rows_come_from_held_out_seeds_only() -> None:
    from ttc.bench.synthetic import EVAL_SEEDS, TRAIN_SEEDS, generate

    rows = load_dataset("synthetic", limit=12, seed=3)
    assert [p.question for p in rows] == [p.question for p in generate(EVAL_SEEDS.start + 3, 12)]
    assert [p.question for p in rows] != [p.question for p in generate(TRAIN_SEEDS.start + 3, 12)]
    with pytest.raises(ConfigError, match="synthetic seed"):
        load_dataset("synthetic", limit=2, seed=-1)


def test_unreadable_files_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'\xff\xfe{"question": "x", "answer": "1"}\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_dataset(str(latin))
    monkeypatch.setenv("TTC_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"gsm8k_test\.jsonl, which does not exist: set TTC_DATA_DIR"):
        load_dataset("gsm8k")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"limit": 2.5}, "limit must be an int >= 1, got 2.5"),
    ({"offset": 1.5}, "offset must be an int >= 0, got 1.5"),
    ({"seed": True}, "seed must be an int, got True"),  # it ran as seed 1, and the rows said seed True
    ({"seed": "1"}, "seed must be an int, got '1'"),
])
def test_slice_and_seed_arguments_must_be_ints(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dataset("synthetic", **kwargs)  # type: ignore[arg-type]


def test_synthetic_levels_are_checked_not_widened() -> None:
    with pytest.raises(ConfigError, match="non-empty selection"):
        load_dataset("synthetic", limit=4, levels=[])
    with pytest.raises(ConfigError, match="has no levels"):
        load_dataset("synthetic-stateful", limit=4, levels=[2])
    assert {p.meta["level"] for p in load_dataset("synthetic", limit=8, levels=[3])} == {3}
    for bad in ([2.0], [True], ["3"]):
        with pytest.raises(ConfigError, match=r"non-empty selection of 1\.\.8"):
            load_dataset("synthetic-totals", limit=3, levels=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'math500' has none to select by"):
        load_dataset("math500", limit=3, levels=[5])


def test_a_stateful_slice_is_the_same_slice_of_a_longer_one() -> None:
    whole = load_dataset("synthetic-stateful", limit=12, seed=2)
    assert [(p.index, p.question, p.context) for p in load_dataset("synthetic-stateful", offset=4, limit=5, seed=2)] \
        == [(p.index, p.question, p.context) for p in whole[4:9]]


def test_answers_are_text_or_finite_numbers_and_never_empty(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    rows = ['{"question": "q", "answer": 12}', '{"question": "q", "answer": 1e20}', '{"question": "q", "answer": 2.5}',
            '{"question": "q", "answer": "Half of 8 is 4. #### 1,004"}']
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert [p.gold for p in load_dataset(str(path))] == ["12", "100000000000000000000", "2.5", "1004"]
    path.write_text('{"question": "q", "answer": 0.00001}\n{"question": "q", "answer": -1.5e-07}\n', encoding="utf-8")
    assert [p.gold for p in load_dataset(str(path))] == ["0.00001", "-0.00000015"]  # was '1e-05': graded apart
    deep = "\\\\sqrt{" * 1000 + "2" + "}" * 1000
    for answer, message in (("true", "a string or a number, got true"), ("[1, 2]", r"got \[1, 2\]"),
                            ('"$"', r"the gold answer '\$' is empty"),  # refused by grading, after the model ran
                            ('"\\\\boxed{}"', "is empty"), (f'"{deep}"', "too deeply nested to grade"),
                            ("{}", r"got \{\}"), ("NaN", "a finite number, got nan"),
                            ("1e400", "a finite number, got inf"), ('"x #### "', r"no 'answer' \(after '####' too\)")):
        path.write_text(f'{{"question": "q", "answer": {answer}}}\n', encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"x.jsonl:1: .*{message}"):
            load_dataset(str(path))


def test_a_lone_surrogate_in_any_kept_field_is_refused_with_its_line(tmp_path: Path) -> None:
    """JSON can escape a lone surrogate; in an answer or a subject it crashed the store with a raw
    UnicodeEncodeError after the run had opened."""
    path = tmp_path / "x.jsonl"
    for row, field in (('{"question": "q", "answer": "5\\udcff"}', "'answer'"),
                       ('{"question": "q\\ud800", "answer": "5"}', "'question'"),
                       ('{"question": "q", "answer": "5", "subject": "al\\ud800g"}', "'subject'"),
                       ('{"question": "q", "answer": "5", "context": "c\\udc80"}', "'context'")):
        path.write_text(f"{row}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"x.jsonl:1: {field} is not valid Unicode text"):
            load_dataset(str(path))


def test_a_byte_order_mark_is_not_part_of_the_first_row_and_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "q1", "answer": "1"}\n\n \n{"question": "q2", "answer": "2"}\n'
                     b'{"question": "q3", "answer": "3"}\n')
    rows = load_dataset(str(path))
    assert [(p.question, p.index) for p in rows] == [("q1", 0), ("q2", 3), ("q3", 4)]
    assert [p.question for p in load_dataset(str(path), offset=1, limit=1)] == ["q2"]


@pytest.mark.parametrize("levels", [5, "12", b"1", 2.0])
@pytest.mark.parametrize("name", ["synthetic", "synthetic-totals"])
def test_levels_that_are_no_selection_are_config_errors(name: str, levels: object) -> None:
    """A single level or a text went through list(levels): a raw TypeError, or a text's characters as levels."""
    with pytest.raises(ConfigError, match=r"a list such as \[1, 2\]"):
        load_dataset(name, limit=2, levels=levels)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ['{"question": "q", "answer": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000],
                         ids=["long-number", "deep-nesting"])
def test_a_row_json_cannot_read_is_named_and_one_before_the_offset_is_skipped(tmp_path: Path, bad: str) -> None:
    """A number past int()'s digit limit, or nesting past the stack, raised ValueError or RecursionError raw."""
    path = tmp_path / "rows.jsonl"
    path.write_text(bad + "\n" + "".join(json.dumps({"question": f"q{i}", "answer": "1"}) + "\n" for i in range(3)))
    assert [p.question for p in load_dataset(str(path), offset=1)] == ["q0", "q1", "q2"]
    with pytest.raises(ConfigError, match=r"rows.jsonl:1: JSON that cannot be read"):
        load_dataset(str(path))
