"""Dataset loaders on the real benchmark files and on malformed input."""

from __future__ import annotations

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
    with pytest.raises(ConfigError, match="limit must be >= 1"):
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


def test_synthetic_levels_are_checked_not_widened() -> None:
    with pytest.raises(ConfigError, match="non-empty selection"):
        load_dataset("synthetic", limit=4, levels=[])
    with pytest.raises(ConfigError, match="has no levels"):
        load_dataset("synthetic-stateful", limit=4, levels=[2])
    assert {p.meta["level"] for p in load_dataset("synthetic", limit=8, levels=[3])} == {3}
