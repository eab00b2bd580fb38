"""Process reward model presets: how each PRM family wants a solution written and where its judgement is read.

Presets are data, looked up by name, so supporting another checkpoint of a known family is a new entry (or a
JSON file), never an if-chain on model names. Three families:

- ``token``: Math-Shepherd style. Each step is followed by a step tag; the PRM's next-token distribution right
  after the tag, restricted to a "good" and a "bad" token, gives P(step correct). Read from prompt logprobs.
- ``chat``: RLHFlow style. Each step is a user turn, the assistant answers ``+`` or ``-``; P(``+``) against
  P(``-``) at each assistant turn is the score. Needs the model's chat template.
- ``pooling``: Qwen2.5-Math-PRM style. A reward head returns per-token class probabilities; the positive-class
  probability at each step-separator token is the score. Needs vLLM's pooling endpoint.
- ``likelihood``: any causal LM that knows the task better than the policy. A step's score is the probability
  of its least likely token given the question and the steps before it. Read from prompt logprobs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

from ttc.contexts import template_fields
from ttc.errors import ConfigError
from ttc.types import is_int

Family = Literal["token", "chat", "pooling", "likelihood"]


@dataclass(frozen=True)
class PRMPreset:
    """One PRM family's format. ``prefix`` holds ``{question}``; ``step_template`` holds ``{step}`` and may hold
    ``{n}`` (1-based step number). For ``token`` PRMs the text is ``prefix + sum(step_template + tag + separator)``;
    ``chat`` PRMs put ``first_turn`` (``{question}``, ``{step}``) and then each step in user turns; ``pooling`` PRMs
    ask ``prefix`` as the user's turn and answer with the steps joined by ``tag`` (and ended by one) as the
    assistant's. Each template is checked when the preset is made: a placeholder it must hold, one the scorer
    does not fill, or a stray brace is a ConfigError, not a failure at the first scoring."""

    name: str
    family: Family
    good: str = "+"
    bad: str = "-"
    tag: str = ""
    prefix: str = "{question}\n"
    step_template: str = "{step}"
    separator: str = "\n"
    first_turn: str = "{question} {step}"
    system: str | None = None
    positive_class: int = 1
    top_k: int = 20

    def __post_init__(self) -> None:
        where = f"PRM preset {self.name!r}"
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("positive_class", "top_k"):
                if not is_int(value) or value < 0:
                    raise ConfigError(f"{where}: {f.name} must be an int >= 0, got {value!r}")
            elif not isinstance(value, str) and not (f.name == "system" and value is None):
                raise ConfigError(f"{where}: {f.name} must be a string, got {value!r}")
        if self.family not in ("token", "chat", "pooling", "likelihood"):
            raise ConfigError(f"{where}: unknown family {self.family!r} (token, chat, pooling, likelihood)")
        if self.family in ("token", "pooling") and not self.tag:
            raise ConfigError(f"{where}: a {self.family} PRM needs a step tag: set 'tag' to the text it reads each "
                              f"step's score at (e.g. {_TAG_EXAMPLES[self.family]})")
        if self.family in ("token", "chat"):
            self._check_judgement_tokens(where)
        template_fields(self.prefix, name=f"{where}: prefix", required={"question"}, allowed={"question"})
        template_fields(self.step_template, name=f"{where}: step_template", required={"step"},
                        allowed={"step", "n"})
        if self.family == "chat":
            template_fields(self.first_turn, name=f"{where}: first_turn", required={"question", "step"},
                            allowed={"question", "step"})

    def _check_judgement_tokens(self, where: str) -> None:
        """A step's score is P(good) against P(bad): with one token for both, or an empty one, every step would
        score the same (0.5, or nothing read at all) and rank nothing."""
        for key in ("good", "bad"):
            if not getattr(self, key):
                raise ConfigError(f"{where}: a {self.family} PRM needs a non-empty '{key}' judgement token: set it "
                                  "to the token the model writes for a correct ('good') or wrong ('bad') step")
        if self.good == self.bad:
            raise ConfigError(f"{where}: 'good' and 'bad' are both {self.good!r}, so every step would score 0.5: "
                              "set them to the two different tokens the model writes for a correct and a wrong step")
        if self.top_k < 2:
            raise ConfigError(f"{where}: a {self.family} PRM reads two judgement tokens from the top-k logprobs, "
                              f"so top_k must be >= 2, got {self.top_k}")


_TAG_EXAMPLES = {"token": "'ки' for Math-Shepherd", "pooling": "'<extra_0>' for Qwen2.5-Math-PRM"}

PRESETS: dict[str, PRMPreset] = {
    "math-shepherd": PRMPreset(
        name="math-shepherd", family="token", tag="ки", good="+", bad="-", prefix="{question} ",
        step_template="Step {n}: {step} ", separator="\n",
    ),
    "rlhflow": PRMPreset(name="rlhflow", family="chat", good="+", bad="-", first_turn="{question} {step}"),
    "qwen2.5-math-prm": PRMPreset(
        name="qwen2.5-math-prm", family="pooling", tag="<extra_0>",
        system="Please reason step by step, and put your final answer within \\boxed{}.",
        prefix="{question}", positive_class=1,
    ),
}


def preset_from_json(path: Path) -> PRMPreset:
    """A preset from a JSON file (keys as in :class:`PRMPreset`; unknown keys are an error)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # a ValueError, not a JSONDecodeError: it failed before JSON was parsed
        raise ConfigError(f"cannot read PRM preset {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                          "save it as UTF-8") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read PRM preset {path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"PRM preset {path} must be a JSON object")
    known = {f.name for f in fields(PRMPreset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"PRM preset {path}: unknown keys {unknown}; valid keys: {sorted(known)}")
    if "family" not in data:
        raise ConfigError(f"PRM preset {path}: no 'family' (one of token, chat, pooling, likelihood)")
    return PRMPreset(**{"name": path.stem, **data})


def get_preset(name: str | os.PathLike[str]) -> PRMPreset:
    """A registered preset, ``mini`` or ``mini-checker`` (the bundled models' own files), or a preset JSON file
    (its path as a string or a ``pathlib.Path``)."""
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(name, str):  # a number or bytes would fail as a TypeError in the path handling below
        raise ConfigError(f"a PRM preset is a name or a .json file's path, got {type(name).__name__} {name!r:.60}: "
                          f"pass one of {', '.join([*PRESETS, 'mini', 'mini-checker'])}, a path, or a PRMPreset")
    if name in PRESETS:
        return PRESETS[name]
    if name in ("mini", "mini-checker"):
        from ttc.models import mini_model_path

        # Both files are prm.json: named by the file, both presets read 'prm' in every message.
        return replace(preset_from_json(mini_model_path("prm" if name == "mini" else "checker") / "prm.json"),
                       name=name)
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return preset_from_json(path)
    raise ConfigError(f"unknown PRM preset {name!r}: use one of {', '.join([*PRESETS, 'mini', 'mini-checker'])} "
                      "or a .json file")


__all__ = ["PRESETS", "Family", "PRMPreset", "get_preset", "preset_from_json"]
