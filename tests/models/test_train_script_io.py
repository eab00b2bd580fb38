"""What the training script writes and refuses: a model folder is replaced whole, sample caches survive a cut
write, and settings that would fail or do nothing late are usage errors before any work."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttc.bench.synthetic import generate
from ttc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ttc" / "models" / "mini"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load(ROOT / "scripts" / "train_mini_models.py", "train_mini_models")


def tiny(script: ModuleType, seed: int) -> object:
    import torch

    torch.manual_seed(seed)
    return script.new_model(script.Shape(hidden=32, layers=1, heads=1, intermediate=64))


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ saving


def test_a_save_stopped_after_the_weights_leaves_the_old_model_byte_identical(
        script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written in place, a stop after the weights left new weights beside the old train_log.json."""
    folder = tmp_path / "reasoner"
    script.save_lm(tiny(script, 1), folder)
    (folder / "train_log.json").write_text('{"steps": 1600}\n')
    before = contents(folder)
    real_save_tokenizer = script.save_tokenizer

    def stopped(directory: Path, *args: object) -> None:
        assert (directory / "model.safetensors").is_file()  # the new weights are already written somewhere
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "save_tokenizer", stopped)
    with pytest.raises(KeyboardInterrupt):
        script.save_lm(tiny(script, 2), folder)
    assert contents(folder) == before
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(script, "save_tokenizer", real_save_tokenizer)
    (tmp_path / ".reasoner.saving").mkdir()  # what a run killed mid-save leaves: cleared by the next save
    script.save_lm(tiny(script, 2), folder, {"train_log.json": '{"steps": 2}\n'})
    after = contents(folder)
    assert set(after) == set(before) | {"generation_config.json", "tokenizer_config.json"}
    assert after["model.safetensors"] != before["model.safetensors"] and after["train_log.json"] == b'{"steps": 2}\n'
    assert leftovers(tmp_path) == []
    assert script.load_model(folder).config.hidden_size == 32


def test_a_model_folder_that_is_a_link_is_saved_where_it_points(script: ModuleType, tmp_path: Path) -> None:
    """The swap renamed the link itself aside, left its target old, and the next save failed on the stale link."""
    (tmp_path / "disk").mkdir()
    link = tmp_path / "out" / "reasoner"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "disk" / "reasoner", target_is_directory=True)
    for steps in (1, 2):
        script.save_lm(tiny(script, steps), link, {"train_log.json": f'{{"steps": {steps}}}\n'})
        assert link.is_symlink() and (tmp_path / "disk" / "reasoner" / "train_log.json").read_text() == \
            f'{{"steps": {steps}}}\n'
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["reasoner"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["reasoner"]


def test_a_training_run_stopped_while_saving_keeps_the_old_model_with_its_own_log(
        script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(script, "greedy_accuracy", lambda model, problems: {"all": 0.0})  # minutes of decoding
    schedule = script.Schedule(steps=1, tokens_per_batch=512, lr=1e-3, warmup=1)
    script.train_lm("draft", schedule, tmp_path, 3, tmp_path / "log.jsonl")
    before = contents(tmp_path / "draft")
    assert json.loads(before["train_log.json"])["schedule"]["steps"] == 1

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "save_tokenizer", stopped)
    with pytest.raises(KeyboardInterrupt):
        script.train_lm("draft", script.Schedule(steps=2, tokens_per_batch=512, lr=1e-3, warmup=1), tmp_path, 3,
                        tmp_path / "log.jsonl")
    assert contents(tmp_path / "draft") == before
    assert leftovers(tmp_path) == []


def test_a_rerun_removes_the_snapshots_of_an_earlier_run(script: ModuleType, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Snapshots of an earlier 300-step run sat beside a new run's, with nothing to tell which run wrote them."""
    monkeypatch.setattr(script, "greedy_accuracy", lambda model, problems: {"all": 0.0})
    for name in ("draft-step4", "draft-step26", "draft-stepwise", "reasoner-step4"):
        (tmp_path / name).mkdir()
    schedule = script.Schedule(steps=3, tokens_per_batch=512, lr=1e-3, warmup=1)
    script.train_lm("draft", schedule, tmp_path, 3, tmp_path / "log.jsonl", save_every=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "draft", "draft-step2", "draft-stepwise", "reasoner-step4"]
    assert "removing " + str(tmp_path / "draft-step26") in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ caches


@pytest.fixture()
def reasoner(script: ModuleType, tmp_path: Path) -> Path:
    folder = tmp_path / "reasoner"
    script.save_lm(tiny(script, 5), folder)
    return folder


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_a_cut_prm_sample_cache_is_said_and_sampled_again(script: ModuleType, reasoner: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], cut: str) -> None:
    """A kill while the cache was written made every later PRM run fail with a raw JSONDecodeError."""
    cache = tmp_path / "cache"
    problems = generate(11, 2)
    data, _ = script.cached_samples(reasoner, cache, problems, 2, 0)
    (path,) = cache.iterdir()
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if cut == "half" else "")
    again, sample_s = script.cached_samples(reasoner, cache, problems, 2, 0)
    assert again == data and sample_s > 0
    assert f"the cache {path} is damaged" in capsys.readouterr().err
    assert path.read_text() == text and [p.name for p in cache.iterdir()] == [path.name]


def test_a_cut_synthesis_path_cache_is_said_and_sampled_again(script: ModuleType, reasoner: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    problems = generate(12, 2)
    paths = script.synthesis_paths(reasoner, cache, problems, 2, 0)
    (path,) = cache.iterdir()
    text = path.read_text()
    path.write_bytes(path.read_bytes()[: len(text) // 3])
    assert script.synthesis_paths(reasoner, cache, problems, 2, 0) == paths
    assert f"the cache {path} is damaged" in capsys.readouterr().err
    assert path.read_text() == text


def test_a_cache_write_that_fails_leaves_the_old_cache(script: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "cache" / "samples.json"
    script.write_cache(path, [[1, 2]])
    with pytest.raises(TypeError):
        script.write_cache(path, [[object()]])
    assert json.loads(path.read_text()) == [[1, 2]]
    assert [p.name for p in path.parent.iterdir()] == ["samples.json"]


# ------------------------------------------------------------------------------------------------ usage errors


def refused(script: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *argv: str) -> str:
    """main's usage error for ``argv``; reaching any training or scoring is a failure."""
    def trained(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{argv} was not refused before the work")

    for name in ("train_lm", "train_prm", "train_synthesizer", "train_stateful", "score_synthesizer"):
        monkeypatch.setattr(script, name, trained)
    with pytest.raises(SystemExit) as stop:
        script.main(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_an_out_under_a_file_is_refused_before_training(script: ModuleType, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """It trained and decoded the dev set, then failed in save_lm with NotADirectoryError."""
    (tmp_path / "afile").write_text("")
    err = refused(script, monkeypatch, capsys, "--stage", "reasoner", "--reasoner-steps", "1", "--out",
                  str(tmp_path / "afile" / "models"), "--log", str(tmp_path / "log.jsonl"))
    assert f"({tmp_path / 'afile'} is not a writable folder)" in err


def test_a_half_saved_earlier_stage_is_refused(script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with config.json alone (a save stopped in a fresh folder) passed, then failed with a traceback."""
    (tmp_path / "reasoner").mkdir()
    (tmp_path / "reasoner" / "config.json").write_bytes((SHIPPED / "reasoner" / "config.json").read_bytes())
    for stage in ("prm", "synthesizer"):
        err = refused(script, monkeypatch, capsys, "--stage", stage, "--out", str(tmp_path), "--log",
                      str(tmp_path / "log.jsonl"))
        assert f"reads the trained reasoner from {tmp_path / 'reasoner'}, which has no complete model" in err


def test_score_synthesizer_needs_the_reasoner_of_out(script: ModuleType, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Its paths come from --out's reasoner, which was not checked: a raw FileNotFoundError."""
    err = refused(script, monkeypatch, capsys, "--score-synthesizer", str(SHIPPED / "synthesizer"), "--out",
                  str(tmp_path), "--log", str(tmp_path / "log.jsonl"))
    assert f"--score-synthesizer reads the trained reasoner from {tmp_path / 'reasoner'}" in err


@pytest.mark.parametrize(("argv", "message"), [
    (("--stage", "prm", "--save-every", "5"), "--stage prm trains none of them"),
    (("--stage", "reasoner", "--reasoner-steps", "3", "--save-every", "3"),
     "--save-every 3 would save no snapshot: it must be below the steps of a model this run trains "
     "(--reasoner-steps 3)"),
    (("--save-every", "4000"), "(--reasoner-steps 1600, --draft-steps 3000, --checker-steps 4000)"),
])
def test_a_save_every_that_can_never_fire_is_refused(script: ModuleType, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                                    message: str) -> None:
    for name in ("reasoner", "checker"):
        for file in ("config.json", "model.safetensors", "tokenizer.json"):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / file).write_text("")
    err = refused(script, monkeypatch, capsys, *argv, "--out", str(tmp_path), "--log", str(tmp_path / "log.jsonl"))
    assert message in err


def test_a_save_every_below_one_stage_steps_passes(script: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    ran: list[str] = []
    monkeypatch.setattr(script, "train_lm", lambda name, *args, **kwargs: ran.append(name))
    for name in ("train_prm", "train_synthesizer", "train_stateful"):
        monkeypatch.setattr(script, name, lambda *args, **kwargs: None)
    script.main(["--save-every", "3500", "--out", str(tmp_path), "--log", str(tmp_path / "log.jsonl"),
                 "--threads", str(torch.get_num_threads())])
    assert ran == ["reasoner", "draft", "checker"]


def namespace(stage: str) -> argparse.Namespace:
    return argparse.Namespace(stage=stage, reasoner_steps=1600, draft_steps=3000, checker_steps=4000,
                              stateful_steps=6000, stateful_drill_steps=8000)


def test_the_seed_check_counts_only_the_stages_that_run(script: ModuleType) -> None:
    """--stage reasoner --seed 16 was refused because the stateful stage, not run, would have read seed 1004000;
    and the recall drills, which draw no problems, were counted as context chunks."""
    stop = script.TRAIN_SEEDS.stop
    assert script.highest_data_seed(namespace("reasoner"), 16) == 16 * 10_000 + 1600 + script.TOTALS_SEED < stop
    assert script.highest_data_seed(namespace("draft"), 20) == 21 * 10_000 + 3000 + script.TOTALS_SEED < stop
    assert script.highest_data_seed(namespace("prm"), 20) == script.PRM_DATA_SEED + 90_020 < stop
    assert script.highest_data_seed(namespace("stateful"), 16) == script.STATEFUL_SEED + 19 * 10_000 + 6000 < stop
    assert script.highest_data_seed(namespace("stateful"), 17) >= stop
    assert script.highest_data_seed(namespace("all"), 16) == script.highest_data_seed(namespace("stateful"), 16)
    checker = namespace("checker")  # two chunk streams above the reasoner's
    assert script.highest_data_seed(checker, 27) < stop <= script.highest_data_seed(checker, 28)


# ------------------------------------------------------------------------------------------------ logged figures


def test_zero_contrastive_problems_means_none(script: ModuleType) -> None:
    """--prm-contrastive-problems 0 trained three context questions' references while the log said 0."""
    assert script.prm_problems(script.PRM_DATA_SEED + 60_000, script.PRM_DATA_SEED + 70_000, 0) == []
    assert len(script.prm_problems(script.PRM_DATA_SEED, script.PRM_DATA_SEED + 50_000, 720)) == 720 - 90 + 93


def test_an_undefined_auroc_is_null_in_strict_json(script: ModuleType) -> None:
    """A tiny PRM run wrote "auroc": NaN into train_log.json, which strict JSON parsers refuse."""
    problem = generate(3, 1)[0]
    steps = script.split_steps(problem.solution)
    right = script.prm_example(problem.question, steps, [True] * len(steps))
    figures = script.prm_eval(tiny(script, 1), [right])
    assert figures["auroc"] is None and figures["steps"] == len(steps)
    assert json.loads(script.train_log({"held_out": figures}))["held_out"]["auroc"] is None
    # A run that diverged logs its NaN loss as null too, rather than failing its save after training.
    diverged = json.loads(script.train_log({"final_loss": float("nan"), "dev": [1.0, float("inf")]}))
    assert diverged == {"final_loss": None, "dev": [1.0, None]}


# ------------------------------------------------------------------------------------------------ benchmark


@pytest.mark.parametrize("damage", ["cut", "no weights"])
def test_the_benchmark_names_a_damaged_model_folder(tmp_path: Path, damage: str) -> None:
    """A model folder whose weights were cut mid-write, or are missing, gave a raw traceback."""
    import shutil

    folder = tmp_path / "reasoner"
    shutil.copytree(SHIPPED / "draft", folder)
    weights = folder / "model.safetensors"
    if damage == "cut":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    mini_models = load(ROOT / "benchmarks" / "mini_models.py", "mini_models")
    with pytest.raises(ConfigError, match=f"model folder {folder} cannot be loaded"):
        mini_models.load_model(folder)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mini_models.py"), "--threads", "1", "--n", "1",
                           "--samples", "1", "--reasoner", str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"model folder {folder} cannot be loaded" in proc.stderr
