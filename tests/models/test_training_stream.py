"""The training script's problem stream: the shipped recipe's stream is unchanged, totals questions mix in."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttc.bench.synthetic import TRAIN_SEEDS, generate, generate_stateful, label_steps


@pytest.fixture(scope="module")
def script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "train_mini_models.py"
    spec = importlib.util.spec_from_file_location("train_mini_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_without_totals_the_stream_is_the_shipped_models_stream(script: ModuleType) -> None:
    chunk, size, top = 12, 384, 4
    expected = generate(TRAIN_SEEDS.start + chunk, size - size // 8, levels=range(1, top + 1))
    for context in generate_stateful(TRAIN_SEEDS.start + 500_000 + chunk, size // 24 + 1, 3):
        expected.extend(context.problems)
    assert script.training_problems(chunk, size, top) == expected[:size]


def test_a_totals_fraction_replaces_word_problems_with_totals_questions(script: ModuleType) -> None:
    mixed = script.training_problems(40, 384, 3, 0.25)
    totals = [p for p in mixed if p.terms]
    assert len(mixed) == 384 and len(totals) == 96
    assert {p.level for p in totals} == {1, 2, 3}
    assert mixed == script.training_problems(40, 384, 3, 0.25)
    for problem in totals[:20]:
        ids, start = script.sft_example(problem)
        text = "".join(script.VOCAB[t] for t in ids[start:-1])
        assert text == problem.solution and all(label_steps(problem, text))
    # the PRM's problems take the same share, from their own seeds
    prm = script.prm_problems(900_000, 950_000, 720, 980_000, 0.25)
    assert sum(bool(p.terms) for p in prm) == 180


def test_at_seven_eighths_the_stream_holds_no_word_problems(script: ModuleType) -> None:
    stream = script.training_problems(40, 384, 3, 0.875)
    assert len(stream) == 384
    context = [q for c in generate_stateful(TRAIN_SEEDS.start + 500_000 + 40, 384 // 24 + 1, 3) for q in c.problems]
    assert sum(bool(p.terms) for p in stream) == 336
    assert [p for p in stream if not p.terms] == context[:48]  # the rest are context questions, no word problems


def test_a_totals_fraction_above_seven_eighths_is_refused(script: ModuleType,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        script.main(["--totals-fraction", "0.9", "--out", "unused"])
    assert refused.value.code == 2
    assert "--totals-fraction must be in [0, 0.875]" in capsys.readouterr().err


def test_save_every_writes_loadable_snapshots_on_the_way(script: ModuleType, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real_accuracy = script.greedy_accuracy
    monkeypatch.setattr(script, "greedy_accuracy", lambda model, problems: real_accuracy(model, problems[:2]))
    schedule = script.Schedule(steps=4, tokens_per_batch=512, lr=1e-3, warmup=1)
    result = script.train_lm("draft", schedule, tmp_path, 3, tmp_path / "log.jsonl", attention="sdpa", save_every=2)
    assert result["schedule"]["steps"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["draft", "draft-step2"]
    snapshot = script.load_model(tmp_path / "draft-step2")
    final = script.load_model(tmp_path / "draft")
    assert (tmp_path / "draft-step2" / "tokenizer.json").is_file()
    # the snapshot is step 2, not a copy of the final weights: two more optimiser steps moved them
    assert not torch.equal(snapshot.model.embed_tokens.weight, final.model.embed_tokens.weight)
    assert final.config.vocab_size == snapshot.config.vocab_size


def test_judge_attention_reaches_the_checker_and_not_the_policy(script: ModuleType, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import torch

    threads = str(torch.get_num_threads())  # main sets torch's thread count for the whole process
    real_accuracy = script.greedy_accuracy
    monkeypatch.setattr(script, "greedy_accuracy", lambda model, problems: real_accuracy(model, problems[:2]))
    trained: dict[str, str] = {}
    real_train_lm = script.train_lm

    def recording(name: str, *args: object, **kwargs: object) -> dict[str, object]:
        trained[name] = str(kwargs["attention"])
        return real_train_lm(name, *args, **kwargs)

    monkeypatch.setattr(script, "train_lm", recording)
    script.main(["--stage", "checker", "--judge-attention", "sdpa", "--checker-steps", "2", "--out", str(tmp_path),
                 "--log", str(tmp_path / "log.jsonl"), "--threads", threads])
    assert trained == {"checker": "sdpa"}
    assert json.loads((tmp_path / "checker" / "train_log.json").read_text())["attention"] == "sdpa"
    assert (tmp_path / "checker" / "prm.json").is_file()
    # the policy models keep eager attention unless asked, as the shipped reasoner and draft were trained
    script.main(["--stage", "draft", "--draft-steps", "1", "--out", str(tmp_path), "--log",
                 str(tmp_path / "log.jsonl"), "--threads", threads])
    assert trained["draft"] == "eager"


@pytest.mark.parametrize("solutions", ["varied", "commuted", "grouped", "grouped-swapped"])
def test_every_kind_of_solution_in_the_stream_is_right(script: ModuleType, solutions: str) -> None:
    import random

    orders = random.Random(5)
    problems = script.training_problems(41, 384, 8)
    texts = []
    for problem in problems:
        ids, start = script.sft_example(problem, orders, solutions)
        text = "".join(script.VOCAB[t] for t in ids[start:-1])
        assert all(label_steps(problem, text)) and text.endswith(f"The answer is {problem.answer}."), text
        texts.append(text)
    assert sum(text != problem.solution for text, problem in zip(texts, problems, strict=True)) > len(problems) // 4


def test_a_draft_distilled_from_a_teacher_moves_towards_its_distribution(script: ModuleType, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--draft-from reasoner: the loss is the teacher's next-token distribution, so a few steps bring the student's
    distribution on a batch of solutions closer to the teacher's than the same schedule on the data does."""
    import torch
    import torch.nn.functional as F

    monkeypatch.setattr(script, "greedy_accuracy", lambda model, problems: {"all": 0.0})
    schedule = script.Schedule(steps=12, tokens_per_batch=1024, lr=2e-3, warmup=1)
    script.train_lm("draft", schedule, tmp_path / "teacher", 7, tmp_path / "log.jsonl", attention="sdpa")
    teacher_dir = tmp_path / "teacher" / "draft"
    distilled = script.train_lm("draft", schedule, tmp_path / "kd", 3, tmp_path / "log.jsonl", attention="sdpa",
                                teacher=teacher_dir)
    script.train_lm("draft", schedule, tmp_path / "data", 3, tmp_path / "log.jsonl", attention="sdpa")
    assert distilled["teacher"] == "draft"
    ids, mask = next(script.sft_batches(11, 1024))
    teacher = script.load_model(teacher_dir).eval()

    def distance(folder: Path) -> float:
        with torch.no_grad():
            wanted = teacher(input_ids=ids).logits[mask].log_softmax(-1)
            got = script.load_model(folder).eval()(input_ids=ids).logits[mask].log_softmax(-1)
        return float(F.kl_div(got, wanted, log_target=True, reduction="batchmean"))

    assert distance(tmp_path / "kd" / "draft") < distance(tmp_path / "data" / "draft")


@pytest.mark.parametrize(("seed", "message"), [("30", "outside TRAIN_SEEDS"), ("-1", "must be >= 0")])
def test_a_seed_whose_data_would_reach_the_held_out_seeds_is_refused(script: ModuleType, seed: str, message: str,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        script.main(["--stage", "draft", "--seed", seed, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err


def test_drills_ask_every_name_and_answer_with_its_count(script: ModuleType) -> None:
    import re

    stream, again = script.drill_batches(3, 1024), script.drill_batches(3, 1024)
    batches = [next(stream) for _ in range(4)]
    first = next(again)
    assert all(a.equal(b) for a, b in zip(batches[0], first, strict=True))  # one stream per seed
    places: set[str] = set()
    rows = [row for ids, mask in batches for row in zip(ids.tolist(), mask.tolist(), strict=True)]
    for row, mask in rows:
        prompt = "".join(script.VOCAB[t] for t, m in zip(row, mask, strict=True) if not m and t > 3)
        answer = "".join(script.VOCAB[t] for t, m in zip(row, mask, strict=True) if m and t > 3)
        counts = dict(re.findall(r"^([A-Z][a-z]+): (\d+)$", prompt, flags=re.M))
        name = re.search(r"does ([A-Z][a-z]+) have\?", prompt)
        assert name is not None and answer == f"{name[1]}: {counts[name[1]]}\nThe answer is {counts[name[1]]}."
        listed = list(counts)
        places.add("first" if name[1] == listed[0] else "last" if name[1] == listed[-1] else "between")
    assert places == {"first", "between", "last"}  # only matching the name finds the count, not its place


def test_drill_steps_come_before_the_contexts_on_their_own_schedule(script: ModuleType, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setattr(script, "stateful_scores", lambda model, contexts: {"drills": script.drill_score(model, 2)})
    schedule = script.Schedule(steps=2, tokens_per_batch=512, lr=1e-3, warmup=1)
    result = script.train_stateful(schedule, tmp_path, 3, tmp_path / "log.jsonl", None, drills=1, drill_steps=3)
    assert result["drill_steps"] == 3 and result["drills"] == 1
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    parts = [e["model"] for e in events if "loss" in e]
    assert parts == ["stateful-drills", "stateful-drills", "stateful", "stateful"]  # steps 0 and 2, then 0 and 1
    assert [e["step"] for e in events if e.get("model") == "stateful-drills" and "drills" in e] == [3]
    assert (tmp_path / "stateful" / "model.safetensors").is_file()


def test_a_language_model_run_saves_its_snapshots_and_a_draft_can_learn_from_its_teacher(
        script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import math

    monkeypatch.setattr(script, "greedy_accuracy", lambda model, problems: 0.0)  # generation is not under test
    schedule = script.Schedule(steps=4, tokens_per_batch=512, lr=1e-3, warmup=1)
    log = tmp_path / "log.jsonl"
    script.train_lm("reasoner", schedule, tmp_path, 0, log, save_every=2)
    assert (tmp_path / "reasoner-step2" / "model.safetensors").is_file()
    assert not (tmp_path / "reasoner-step4").exists()  # the end is the model itself, not a snapshot
    script.train_lm("draft", script.Schedule(steps=2, tokens_per_batch=512, lr=1e-3, warmup=1), tmp_path, 1, log,
                    teacher=tmp_path / "reasoner")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    done = {e["model"]: e for e in events if e.get("event") == "done"}
    assert done["draft"]["teacher"] == "reasoner" and "teacher" not in done["reasoner"]
    assert all(math.isfinite(e["loss"]) and e["loss"] >= 0 for e in events if "loss" in e)
    assert [e["step"] for e in events if e.get("model") == "draft" and "loss" in e] == [0, 1]
