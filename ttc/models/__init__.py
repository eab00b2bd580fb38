"""Models shipped with ttc: the mini reasoner, draft, process reward model, checker and stateful reasoner, and how
to prompt them.

They are small enough to run on a laptop CPU and were trained on :mod:`ttc.bench.synthetic`, so test-time
compute strategies can be exercised end to end with real models and real accuracy gains, without downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from ttc.errors import ConfigError

MiniModelName = Literal["reasoner", "draft", "prm", "checker", "stateful", "synthesizer"]

STEP_DELIMITER = "\n"
"""What separates two steps in a mini model's solution (and in the process reward model's input)."""

_MINI_DIR = Path(__file__).resolve().parent / "mini"


def mini_prompt(question: str) -> str:
    """The exact text the mini reasoner continues: the question, then a newline.

    The solution that follows is one computation per line, then ``The answer is N.`` and EOS. The tokenizer
    prepends BOS on its own, so this is plain text.
    """
    return f"{question}\n"


MINI_CONTEXT_TEMPLATE = "{context}\n{notes}{question}\n"
"""How the mini stateful reasoner reads a question about a shared context: the context, the notes written about
it at sleep time (none: an empty string), the question; its solution follows."""

MINI_SLEEP_TEMPLATE = "{context}\n"
"""What the mini stateful reasoner continues with notes about a context when no question has come yet."""

MINI_SYNTHESIS_TEMPLATE = "{question}\n{paths}so:\n"
"""How the mini synthesizer reads a question and the reasoner's paths for it (parallel thinking); its final
solution follows, in the reasoner's format. With no paths it is the question, then ``so:``."""

MINI_PATH_TEMPLATE = "{count} of {total}:\n{text}\n"
"""One distinct path in :data:`MINI_SYNTHESIS_TEMPLATE`: how many of the sampled paths wrote it, then its text."""


def mini_model_path(name: MiniModelName) -> Path:
    """The folder of a bundled mini model, loadable with ``transformers.AutoModelForCausalLM.from_pretrained``."""
    if name not in get_args(MiniModelName):
        raise ConfigError(f"unknown mini model {name!r}; choose one of {', '.join(get_args(MiniModelName))}")
    path = _MINI_DIR / name
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ConfigError(
            f"mini model {name!r} is missing at {path}; reinstall ttc-engine, or rebuild it with "
            "`python scripts/train_mini_models.py`"
        )
    return path


__all__ = [
    "MINI_CONTEXT_TEMPLATE",
    "MINI_PATH_TEMPLATE",
    "MINI_SLEEP_TEMPLATE",
    "MINI_SYNTHESIS_TEMPLATE",
    "STEP_DELIMITER",
    "MiniModelName",
    "mini_model_path",
    "mini_prompt",
]
