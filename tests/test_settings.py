"""Settings from the environment and the command line: each read as written, or refused naming what to fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ttc.backends.vllm import VLLMBackend
from ttc.bench.datasets import data_dir
from ttc.cli import parse_options, scripted_delay
from ttc.config import default_backend, with_helpers
from ttc.errors import ConfigError
from ttc.storage import TraceStore

MINI = Path(__file__).resolve().parents[1] / "ttc" / "models" / "mini"


def test_options_read_numbers_json_does_not_write_and_refuse_a_key_given_twice() -> None:
    """'.5' stayed a string (then 'Input should be a valid number'); n=2 then n=6 ran 6. Text is kept as given:
    a template's trailing newlines are part of it."""
    assert parse_options(["temperature=.5", "top_p= 1. ", "path_template={text}\n\n", "n= 5 "]) == {
        "temperature": 0.5, "top_p": 1.0, "path_template": "{text}\n\n", "n": 5}
    with pytest.raises(ConfigError, match="option 'n' is given twice"):
        parse_options(["n=2", "n=6"])


def test_the_data_folder_is_read_like_every_other_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """' /path' named a folder whose name starts with a space; a blank value was a folder named '   '."""
    monkeypatch.setenv("TTC_DATA_DIR", f"  {tmp_path}  ")
    assert data_dir() == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TTC_DATA_DIR", "~/data")
    assert data_dir() == tmp_path / "data"
    monkeypatch.setenv("TTC_DATA_DIR", "   ")
    assert str(data_dir()).strip() == str(data_dir()) and data_dir() != Path("   ")


def test_model_folders_expand_a_home_tilde(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TTC_DB expanded ~, TTC_MODEL and the draft's folder did not: 'model folder ~/reasoner does not exist'."""
    (tmp_path / "models").symlink_to(MINI)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TTC_MODEL", "~/models/draft")
    monkeypatch.setenv("TTC_DRAFT_MODEL", "~/models/nothing-here")
    setup = default_backend()
    try:
        assert setup.backend.name.endswith("draft")
        with pytest.raises(ConfigError, match=f"model folder {tmp_path}/models/nothing-here does not exist: "
                                              "TTC_DRAFT_MODEL"):
            setup.draft_backend()
    finally:
        import anyio

        anyio.run(setup.aclose)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TTC_DRAFT_URL", "127.0.0.1:8001", "TTC_DRAFT_URL: vLLM server URL must start with http://"),
    ("TTC_SYNTHESIZER_URL", ",", "TTC_SYNTHESIZER_URL ',' names no server URL"),
])
def test_a_bad_helper_url_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                             message: str) -> None:
    monkeypatch.setenv(variable, value)
    setup = with_helpers(default_backend(url="http://127.0.0.1:9"))
    loader = setup.draft_loader if variable == "TTC_DRAFT_URL" else setup.synthesizer_loader
    assert loader is not None
    with pytest.raises(ConfigError, match=message):
        loader()


def test_the_busy_timeout_variable_is_named_in_its_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TTC_DB_BUSY_TIMEOUT_S", "nan")
    with pytest.raises(ConfigError, match="TTC_DB_BUSY_TIMEOUT_S must be a number of seconds from 0 to"):
        TraceStore(tmp_path / "t.db")


def test_from_env_trims_the_model_and_key_as_the_embedded_settings_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """' qwen ' named no served model, and a blank key went out as 'Bearer   '."""
    monkeypatch.setenv("TTC_VLLM_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TTC_VLLM_MODEL", " qwen ")
    monkeypatch.setenv("TTC_VLLM_API_KEY", "   ")
    backend = VLLMBackend.from_env()
    assert backend.model == "qwen" and backend._api_key is None


@pytest.mark.parametrize("target", ["TTC_VLLM_URL", "url"])
def test_the_vllm_model_variable_names_the_targets_model_only(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """TTC_VLLM_MODEL=reasoner was asked of the draft server too, which failed: "model 'reasoner' is not served here;
    the server lists ['draft']". Each helper server is asked for the one model it serves."""
    monkeypatch.setenv("TTC_VLLM_MODEL", " reasoner ")
    monkeypatch.setenv("TTC_DRAFT_URL", "http://127.0.0.1:8002")
    monkeypatch.setenv("TTC_SYNTHESIZER_URL", "http://127.0.0.1:8003")
    if target == "url":
        setup = default_backend(url="http://127.0.0.1:8001")
    else:
        monkeypatch.setenv("TTC_VLLM_URL", "http://127.0.0.1:8001")
        setup = default_backend()
    draft, synthesizer = setup.draft_backend(), setup.synthesizer_backend()
    assert isinstance(setup.backend, VLLMBackend) and isinstance(draft, VLLMBackend)
    assert isinstance(synthesizer, VLLMBackend)
    assert setup.backend.model == "reasoner"
    assert (draft.urls, draft.model) == (("http://127.0.0.1:8002",), None)
    assert (synthesizer.urls, synthesizer.model) == (("http://127.0.0.1:8003",), None)


def test_the_api_key_still_goes_to_every_vllm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_VLLM_API_KEY", " secret ")
    monkeypatch.setenv("TTC_DRAFT_URL", "http://127.0.0.1:8002")
    setup = default_backend(url="http://127.0.0.1:8001")
    draft = setup.draft_backend()
    assert isinstance(setup.backend, VLLMBackend) and isinstance(draft, VLLMBackend)
    assert setup.backend._api_key == draft._api_key == "secret"


@pytest.mark.parametrize(("variable", "value", "span", "read"), [
    ("TTC_VLLM_TIMEOUT", "-1", "above 0", lambda: VLLMBackend("http://127.0.0.1:9")),
    ("TTC_DB_BUSY_TIMEOUT_S", "inf", "from 0 to 2147483,", None),
    ("TTC_SCRIPTED_DELAY_S", "nan", "0 or more", scripted_delay),
])
def test_every_seconds_variable_refuses_a_bad_value_alike(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          variable: str, value: str, span: str,
                                                          read: Callable[[], object] | None) -> None:
    """Each names itself, the range it takes, and that unsetting it gives the default."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^{variable} must be a number of seconds {span}.*got '{value}'.*unset "
                                          r"it for the default \(\d+ s\)$"):
        read() if read is not None else TraceStore(tmp_path / "t.db")
    monkeypatch.setenv(variable, "  ")
    read() if read is not None else TraceStore(tmp_path / "t.db").close()
