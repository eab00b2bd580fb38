"""Benchmark scripts run as `python3 benchmarks/NAME.py`, which puts `benchmarks/` first on `sys.path`.

A script named like an installed package then shadows it for everything the script imports: transformers
imports the `kernels` package at start-up, so a `benchmarks/kernels.py` broke every benchmark that loads a model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py"))


def test_there_are_benchmark_scripts() -> None:
    assert "mini_models" in SCRIPTS


@pytest.mark.parametrize("stem", SCRIPTS)
def test_no_script_shadows_an_importable_module(stem: str, tmp_path: Path) -> None:
    # A fresh interpreter in an empty folder sees what a script sees besides its own folder; pytest's own
    # sys.path holds tests/, whose subfolders would read as modules here.
    probe = f"import importlib.util; spec = importlib.util.find_spec({stem!r}); print(spec.origin if spec else '')"
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    origin = found.stdout.strip()
    assert not origin, f"benchmarks/{stem}.py shadows the importable module {stem!r} ({origin}) when run as a script"
