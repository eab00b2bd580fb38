"""The mini-model benchmark's ``--calculator`` diagnostic writes each equation's result, and nothing else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoTokenizer

from ttc.models import mini_model_path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mini_models.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mini_models_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def allowed(bench: ModuleType, text: str) -> set[str]:
    """The characters the calculator leaves open after ``text`` (a prompt line, then a solution so far)."""
    tok = AutoTokenizer.from_pretrained(mini_model_path("reasoner"))
    ids = torch.tensor([tok(text)["input_ids"]])
    scores = bench.Calculator(tok)(ids, torch.zeros(1, len(tok)))
    return {tok.convert_ids_to_tokens(i) for i in torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()}


def test_the_calculator_writes_each_digit_of_a_result_then_ends_the_number(bench: ModuleType) -> None:
    question = "Tom has 12 eggs. Tom gets 7 more. How many eggs now?\n"
    assert allowed(bench, question + "12 + 7 = ") == {"1"}
    assert allowed(bench, question + "12 + 7 = 1") == {"9"}
    after = allowed(bench, question + "12 + 7 = 19")
    assert "\n" in after and not after & set("0123456789.")
    assert allowed(bench, question + "19 * 3 = 5") == {"7"}
    assert allowed(bench, question + "12 / 4 = ") == {"3"}


def test_the_calculator_leaves_everything_else_to_the_model(bench: ModuleType) -> None:
    question = "Tom has 12 eggs. Tom gets 7 more. How many eggs now?\n"
    tok = AutoTokenizer.from_pretrained(mini_model_path("reasoner"))
    everything = set(tok.convert_ids_to_tokens(list(range(len(tok)))))
    assert allowed(bench, question) == everything
    for text in ("12 + 7", "12 + 7 =", "7 / 2 = ", "2 - 7 = ", "12 + 7 = 20", "The answer is 1"):
        assert allowed(bench, question + text) == everything, text
