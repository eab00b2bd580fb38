"""Benchmark scripts run as `python3 benchmarks/NAME.py`, which puts `benchmarks/` first on `sys.path`.

A script named like an installed package then shadows it for everything the script imports: transformers
imports the `kernels` package at start-up, so a `benchmarks/kernels.py` broke every benchmark that loads a model.
"""

from __future__ import annotations

import argparse
import importlib.util
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


@pytest.mark.parametrize(("args", "message"), [
    (("sleep_time.py", "--contexts", "0"), "argument --contexts: must be an int >= 1, got '0'"),
    (("sleep_time.py", "--sleep", "0:1"), "argument --sleep: must be DRAFTS:SAMPLES pairs of ints >= 1"),
    (("tree_search.py", "--budgets", "512,0"), "argument --budgets: must be distinct ints >= 1"),
    (("lookahead_reasoning.py", "--gammas", "a"), "argument --gammas: must be distinct ints >= 1"),
    (("batch_search.py", "--budgets", "", "--even-budgets", ""), "there would be no arm to measure"),
    (("wrong_totals.py", "--reasoner", "no/such/folder"), "must be a model folder holding config.json"),
    (("mini_models.py", "--distinct", "--calculator"), "which has no calculator"),
    # A transformers traceback after the models loaded, or a table labelled with a nucleus nothing could use.
    (("mini_models.py", "--temperature", "0"), "argument --temperature: must be a number in (0, 100], got '0'"),
    (("mini_models.py", "--top-p", "1.5"), "argument --top-p: must be a number in (0, 1], got '1.5'"),
])
def test_a_setting_that_measures_nothing_is_a_usage_error_before_any_model_loads(
        args: tuple[str, ...], message: str) -> None:
    """Zero counts crashed with a traceback, some only after every arm had run; a missing model folder was read
    as a Hub id and tried the network."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_training_refuses_every_seed_whose_data_would_reach_the_held_out_problems() -> None:
    """The stateful reasoner's contexts were left out of the check: seed 17 drew them from a held-out seed."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_mini_models.py"
    proc = subprocess.run([sys.executable, str(script), "--stage", "stateful", "--seed", "17"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "outside TRAIN_SEEDS" in proc.stderr, proc.stderr
    largest = int(proc.stderr.rsplit("[0, ", 1)[1].split("]")[0])
    spec = importlib.util.spec_from_file_location("train_mini_models", script)
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train  # its dataclasses look their module up while the script runs
    try:
        spec.loader.exec_module(train)
    finally:
        del sys.modules[spec.name]
    defaults = argparse.Namespace(reasoner_steps=1600, draft_steps=3000, checker_steps=4000, stateful_steps=6000,
                                  stateful_drill_steps=8000)
    # The seed it suggests passes the check (the suggestion was once one past it); the next one does not.
    assert train.highest_data_seed(defaults, largest) < train.TRAIN_SEEDS.stop <= train.highest_data_seed(
        defaults, largest + 1)
    for args in (["--stateful-steps", "300000"], ["--seed", "100000000"]):  # no seed fits; a far seed (it hung)
        refused = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    stateful_contexts = train.STATEFUL_SEED + (17 + 3) * 10_000
    assert train.highest_data_seed(defaults, 17) >= stateful_contexts >= train.TRAIN_SEEDS.stop


TRAIN = Path(__file__).resolve().parents[1] / "scripts" / "train_mini_models.py"


@pytest.mark.parametrize(("args", "message"), [
    # Each trained nothing or a broken model and exited 0, or raised a raw traceback (some after sampling).
    (("--stage", "draft", "--draft-steps", "0"), "argument --draft-steps: expected an int >= 1, got 0"),
    (("--stage", "draft", "--threads", "0"), "argument --threads: expected an int >= 1, got 0"),
    (("--stage", "prm", "--prm-samples", "0"), "argument --prm-samples: expected an int >= 1, got 0"),
    (("--stage", "prm", "--prm-lm-weight", "nan"), "argument --prm-lm-weight: expected a finite number >= 0"),
    (("--stage", "stateful", "--stateful-lr", "-1"), "argument --stateful-lr: expected a finite number > 0"),
    (("--stage", "stateful", "--stateful-layers", "9"), "--stateful-layers keeps the checker's first layers"),
    (("--stage", "synthesizer", "--synthesizer-examples", "0"), "expected an int >= 1, got 0"),  # hung for good
    (("--stage", "draft", "--draft-shape", "0x4"), "HIDDEN a multiple of 32"),
    (("--stage", "draft", "--save-every", "-1"), "argument --save-every: expected an int >= 0"),
])
def test_training_settings_that_cannot_train_are_usage_errors(args: tuple[str, ...], message: str,
                                                              tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TRAIN), *args, "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_training_refuses_a_missing_earlier_stage_or_a_file_for_out_before_any_work(tmp_path: Path) -> None:
    """Found late: a Hub download attempt, or a raw FileNotFoundError after the samples were drawn."""
    for stage, missing in (("prm", "reasoner"), ("stateful", "draft"), ("synthesizer", "reasoner")):
        proc = subprocess.run([sys.executable, str(TRAIN), "--stage", stage, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"reads the trained {missing} from {tmp_path / missing}" in proc.stderr
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, str(TRAIN), "--stage", "draft", "--out", str(tmp_path / "afile")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is a file; pass a folder" in proc.stderr


def test_each_bundled_tokenizer_config_states_its_models_context() -> None:
    """The synthesizer's said 512 of its 1536 positions: transformers truncated a 961-token synthesis prompt."""
    import json

    mini = Path(__file__).resolve().parents[1] / "ttc" / "models" / "mini"
    for folder in sorted(p for p in mini.iterdir() if (p / "config.json").is_file()):
        positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
        assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == positions, folder
