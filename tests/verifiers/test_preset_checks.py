"""PRM presets that could never score are refused when made or read, with the field to change named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttc.errors import ConfigError
from ttc.testing import ScriptedBackend
from ttc.verifiers.prm import judge, load_prm
from ttc.verifiers.prm_presets import PRMPreset, get_preset


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "my_prm.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_pooling_preset_without_a_step_tag_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"a pooling PRM needs a step tag: set 'tag'.*'<extra_0>'"):
        PRMPreset(name="pool", family="pooling", prefix="{question}")


def test_a_pooling_preset_file_without_a_step_tag_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, {"family": "pooling"})
    with pytest.raises(ConfigError, match=r"PRM preset 'my_prm': a pooling PRM needs a step tag: set 'tag'"):
        load_prm(ScriptedBackend(["x"]), path)


def test_a_pooling_preset_with_a_tag_still_loads() -> None:
    assert PRMPreset(name="pool", family="pooling", tag="<extra_0>", prefix="{question}").tag == "<extra_0>"


@pytest.mark.parametrize("family", ["token", "chat"])
def test_a_preset_whose_good_and_bad_tokens_are_the_same_is_refused(family: str) -> None:
    with pytest.raises(ConfigError, match=r"'good' and 'bad' are both '✓', so every step would score 0\.5"):
        PRMPreset(name="same", family=family, tag="¶", good="✓", bad="✓")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["token", "chat"])
@pytest.mark.parametrize("empty", ["good", "bad"])
def test_a_preset_with_an_empty_judgement_token_is_refused(family: str, empty: str) -> None:
    with pytest.raises(ConfigError, match=rf"a {family} PRM needs a non-empty '{empty}' judgement token"):
        PRMPreset(name="blank", family=family, tag="¶", **{empty: ""})  # type: ignore[arg-type]


def test_a_preset_file_whose_good_and_bad_tokens_are_the_same_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, {"family": "token", "tag": "¶", "good": "✓", "bad": "✓", "top_k": 64})
    with pytest.raises(ConfigError, match="PRM preset 'my_prm': 'good' and 'bad' are both"):
        get_preset(path)


def test_a_judge_asked_with_one_word_for_yes_and_no_is_refused() -> None:
    with pytest.raises(ConfigError, match="'good' and 'bad' are both ' Yes'"):
        judge(ScriptedBackend(["x"]), yes=" Yes", no=" Yes")


@pytest.mark.parametrize("family", ["pooling", "likelihood"])
def test_families_that_read_no_judgement_tokens_do_not_check_them(family: str) -> None:
    preset = PRMPreset(name="other", family=family, tag="¶", good="", bad="")  # type: ignore[arg-type]
    assert preset.family == family


def test_a_preset_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"family": "likelihood", "name": "café"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json: it is not UTF-8 text .*: save it as UTF-8"):
        get_preset(path)
