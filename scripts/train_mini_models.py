#!/usr/bin/env python3
"""Train the bundled mini models (reasoner, draft, checker, process reward model, synthesizer, stateful reasoner)
on the synthetic benchmark, on CPU.

    python3 scripts/train_mini_models.py                      # all six, into ttc/models/mini/
    python3 scripts/train_mini_models.py --stage prm          # only the PRM (needs a trained reasoner)

Order matters: the reasoner first; the draft learns the same data; the checker learns it too, for 2.5x as many
steps, so that it knows the right step far more often than the reasoner; the PRM starts from the checker and is
trained on solutions *sampled from the trained reasoner* (temperature 0.8, several per problem), each step
labelled exactly by ``ttc.bench.synthetic.label_steps``, so it learns the reasoner's real mistakes. The stateful
reasoner starts from the trained draft, learns to read a count back by name on recall drills alone, then learns
context questions: notes about a context (sleep time), answers from the context alone, and answers from the
context and its notes (the shipped one with ``--stage stateful --threads 1``). The synthesizer (parallel
thinking) learns to write a solution after reading several sampled paths of the reasoner.

Every run is a pure function of ``--seed`` on a given machine and torch build: data come from ``TRAIN_SEEDS``
through ``random.Random(seed)``, weights from ``torch.manual_seed``; training runs a fixed number of steps (never
"until time is up"), on two threads unless ``--threads`` says otherwise. Another CPU can round differently; the
draft came out bit for bit the same on a second machine, the 1600-step reasoner did not (docs/mini_models.md has
both). Each model folder gets a ``train_log.json`` with the settings, wall time and final numbers, and is written
beside the old one and then swapped in whole: a run stopped while saving leaves the old model or the new one.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

# Other work shares these cores: busy-waiting OpenMP threads would then burn most of the time slice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttc.bench.groupings import commuted_solution, grouped_solution
from ttc.bench.synthetic import (
    ANSWER_PREFIX,
    EVAL_SEEDS,
    LEVELS,
    NAMES,
    OBJECTS,
    TRAIN_SEEDS,
    StatefulContext,
    SyntheticProblem,
    check_answer,
    evaluate,
    generate,
    generate_stateful,
    label_steps,
    split_steps,
    varied_solution,
)
from ttc.bench.totals import generate_totals
from ttc.models import (
    MINI_CONTEXT_TEMPLATE,
    MINI_PATH_TEMPLATE,
    MINI_SLEEP_TEMPLATE,
    MINI_SYNTHESIS_TEMPLATE,
    STEP_DELIMITER,
    mini_prompt,
)
from ttc.models.mini.tokenizer import (
    BAD_TOKEN,
    BOS,
    CHARACTERS,
    EOS,
    GOOD_TOKEN,
    PAD,
    SPECIAL_TOKENS,
    STEP_TAG,
    VOCAB,
    VOCAB_SIZE,
    encode,
    save_tokenizer,
)
from ttc.strategies.base import TOP_P
from ttc.strategies.synthesis import merge_paths, render_synthesis
from ttc.verifiers.answer import extract_answer
from ttc.verifiers.metrics import auroc

BOS_ID, EOS_ID, PAD_ID = VOCAB.index(BOS), VOCAB.index(EOS), VOCAB.index(PAD)
GOOD_ID, BAD_ID, TAG_ID = VOCAB.index(GOOD_TOKEN), VOCAB.index(BAD_TOKEN), VOCAB.index(STEP_TAG)
MAX_POSITIONS = 512
DEV_SEED = EVAL_SEEDS.start + 500_000  # held out, and distinct from the benchmark's default seed
SAMPLE_TEMPERATURE = 0.8  # the strategies' default: the PRM learns the mistakes it will be shown
PRM_DATA_SEED = 900_000  # inside TRAIN_SEEDS, away from the chunks the reasoner saw first
VARIED_ORDER_SEED = 12_345  # plus the model's seed: the stream of solution orders under --solutions other than fixed
SOLUTIONS: dict[str, Callable[[SyntheticProblem, random.Random], str] | None] = {
    "fixed": None, "varied": varied_solution, "commuted": commuted_solution, "grouped": grouped_solution,
    "grouped-swapped": functools.partial(grouped_solution, swap=True),
}
TOTALS_SEED = 700_000  # inside TRAIN_SEEDS: the totals questions of --totals-fraction (plus the chunk)


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Schedule:
    steps: int
    tokens_per_batch: int
    lr: float
    warmup: int = 100
    weight_decay: float = 0.01


SHAPES = {
    "reasoner": Shape(hidden=256, layers=4, heads=8, intermediate=688),
    "draft": Shape(hidden=128, layers=4, heads=4, intermediate=352),
    # The checker: the reasoner's shape, trained on the same data 2.5x longer, so that it knows the right next step
    # far more often than the reasoner it judges. It scores steps by likelihood (preset mini-checker) and is the
    # token PRM's starting point.
    "checker": Shape(hidden=256, layers=4, heads=8, intermediate=688),
    # The stateful reasoner knows only context questions (ttc.bench.synthetic.generate_stateful) and notes about a
    # context, a narrower task than the reasoner's, so it is smaller.
    "stateful": Shape(hidden=192, layers=4, heads=6, intermediate=528),
}
STATEFUL_SEED = 800_000  # inside TRAIN_SEEDS: the stateful reasoner's contexts are chunk seeds above it
RECALL_SEED = 4_242  # plus the model's seed: the stream of recall drills (names and counts, not problems)
STATEFUL_TOKENS = 288  # the longest notes and a derivation from the context alone are about 250 characters


def log(path: Path, **fields: object) -> None:
    line = json.dumps(fields)
    print(line, flush=True)
    with path.open("a") as handle:
        handle.write(line + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_model(shape: Shape, attention: str = "eager") -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    config._attn_implementation = attention
    return LlamaForCausalLM(config)


def load_model(path: Path, attention: str = "eager") -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention)
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------- data


def sft_example(problem: SyntheticProblem, orders: random.Random | None = None, solutions: str = "varied"
                ) -> tuple[list[int], int]:
    """Token ids ``BOS prompt solution EOS`` and where the solution starts (the loss covers only the solution).

    With ``orders`` the solution is one of the problem's valid solutions drawn from it by ``SOLUTIONS[solutions]``
    instead of the fixed reference order."""
    prompt = [BOS_ID, *encode(mini_prompt(problem.question))]
    draw = SOLUTIONS[solutions]
    solution = problem.solution if orders is None or draw is None else draw(problem, orders)
    return [*prompt, *encode(solution), EOS_ID], len(prompt)


def training_problems(chunk: int, size: int, max_level: int = 8, totals_fraction: float = 0.0
                      ) -> list[SyntheticProblem]:
    """Chunk ``chunk`` of the training stream: mostly word problems, an eighth stateful (context) questions, and
    ``totals_fraction`` of it totals questions (``ttc.bench.totals``) in place of word problems. Each totals
    question comes with its own grouping of the sum, so the stream shows many right chains per kind of question.
    At 0 the stream is exactly that of the shipped models."""
    start = TRAIN_SEEDS.start + chunk
    problems = problem_mix(start, start + 500_000, start + TOTALS_SEED, size, totals_fraction,
                           range(1, max_level + 1))
    return problems[:size]


def problem_mix(seed: int, stateful_seed: int, totals_seed: int, n: int, totals_fraction: float,
                levels: Sequence[int] = LEVELS) -> list[SyntheticProblem]:
    """About ``n`` problems: seven eighths word problems, ``totals_fraction`` of them replaced by totals
    questions, then stateful (context) questions for the rest; each kind from its own seed, so the policy's and
    the PRM's streams are built one way."""
    totals = round(n * totals_fraction)
    problems = generate(seed, n - n // 8 - totals, levels=levels)
    if totals:
        problems += generate_totals(totals_seed, totals, levels=levels)
    for context in generate_stateful(stateful_seed, n // 24 + 1, 3):
        problems.extend(context.problems)
    return problems


def curriculum(chunk: int) -> int:
    """The hardest level in chunk ``chunk``: short problems first, so copying operands and two-digit arithmetic
    are learned where they are cheap, then all eight levels from chunk 36 on."""
    return min(8, 2 + chunk // 6)


Item = TypeVar("Item", tuple[list[int], int], tuple[list[int], list[int]])  # an LM example or a PRM example


def length_batches(items: Sequence[Item], tokens_per_batch: int, rng: random.Random) -> list[list[Item]]:
    """Group items of similar length so that padding is small; the order of groups is shuffled."""
    ordered = sorted(items, key=lambda item: len(item[0]))
    batches: list[list[Item]] = []
    current: list[Item] = []
    for item in ordered:
        if current and (len(current) + 1) * len(item[0]) > tokens_per_batch:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(batch: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and a mask of the target positions (solution tokens) for next-token loss."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (tokens, start) in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        target_mask[row, start : len(tokens)] = True
    return ids, target_mask


def sft_batches(seed: int, tokens_per_batch: int, solutions: str = "fixed", totals_fraction: float = 0.0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rng = random.Random(seed)
    orders = random.Random(VARIED_ORDER_SEED + seed) if SOLUTIONS[solutions] else None
    chunk = 0
    while True:
        problems = training_problems(seed * 10_000 + chunk, 384, curriculum(chunk), totals_fraction)
        items = [sft_example(p, orders, solutions) for p in problems]
        for batch in length_batches(items, tokens_per_batch, rng):
            yield collate(batch)
        chunk += 1


def lr_at(step: int, schedule: Schedule) -> float:
    if step < schedule.warmup:
        return schedule.lr * (step + 1) / schedule.warmup
    progress = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
    return schedule.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_for(model: torch.nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr,
        betas=(0.9, 0.98),
    )


def log_progress(log_path: Path, name: str, step: int, schedule: Schedule, running: float, tokens: int,
                 started: float) -> None:
    """Every 50th step and the last: the running loss, learning rate, tokens seen and throughput."""
    if step % 50 == 0 or step == schedule.steps - 1:
        elapsed = time.time() - started
        log(log_path, model=name, step=step, loss=round(running, 4), lr=round(lr_at(step, schedule), 6),
            tokens=tokens, elapsed_s=round(elapsed, 1), tok_per_s=round(tokens / max(elapsed, 1e-9)))


def apply_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on ``loss``, gradients clipped to norm 1; a loss that is not finite stops the run, since
    its step would turn every weight to NaN and the model would be saved as if trained."""
    if not math.isfinite(loss.item()):
        raise SystemExit(f"train_mini_models.py: the loss is {loss.item()}: stopping before the weights become NaN; "
                         "lower the learning rate, or check --prm-lm-weight")
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def masked_lm_step(model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
                   target_mask: torch.Tensor, step: int, schedule: Schedule,
                   teacher: LlamaForCausalLM | None = None) -> float:
    """One step at the schedule's learning rate on the target positions (``target_mask``): next-token loss, or,
    with ``teacher``, the divergence from the teacher's next-token distribution there; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, schedule)
    logits = model(input_ids=ids).logits[:, :-1]
    mask = target_mask[:, 1:]
    if teacher is None:
        loss = F.cross_entropy(logits[mask], ids[:, 1:][mask])
    else:
        with torch.no_grad():
            wanted = teacher(input_ids=ids).logits[:, :-1][mask].log_softmax(-1)
        loss = F.kl_div(logits[mask].log_softmax(-1), wanted, log_target=True, reduction="batchmean")
    apply_step(model, optimizer, loss)
    return float(loss.item())


# ------------------------------------------------------------------------------------------------ generation


@torch.no_grad()
def complete(model: LlamaForCausalLM, prompts: Sequence[str], *, samples: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 170, batch_rows: int = 96, top_p: float = 1.0) -> list[list[str]]:
    """``samples`` completions per prompt (greedy when temperature is 0, from the ``top_p`` nucleus when not),
    cut at EOS."""
    torch.nn.Module.eval(model)  # transformers' own eval() is untyped
    results: list[list[str]] = [[] for _ in prompts]
    per_batch = max(1, batch_rows // samples)
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start : start + per_batch]
        encoded = [[BOS_ID, *encode(p)] for p in chunk]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[PAD_ID] * (width - len(e)) + e for e in encoded])
        attention = (torch.arange(width)[None, :] >= torch.tensor([width - len(e) for e in encoded])[:, None]).long()
        out = model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0 if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None,
            num_return_sequences=samples,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
        for row, tokens in enumerate(out[:, width:].tolist()):
            if EOS_ID in tokens:
                tokens = tokens[: tokens.index(EOS_ID)]
            text = "".join(VOCAB[t] if t >= len(SPECIAL_TOKENS) else "\0" for t in tokens)
            results[start + row // samples].append(text)
    return results


def greedy_accuracy(model: LlamaForCausalLM, problems: Sequence[SyntheticProblem]) -> dict[str, float]:
    ordered = sorted(range(len(problems)), key=lambda i: problems[i].level)
    texts = complete(model, [mini_prompt(problems[i].question) for i in ordered])
    correct = {i: check_answer(problems[i], t[0]) for i, t in zip(ordered, texts, strict=True)}
    by_level: dict[str, list[bool]] = {}
    for i, ok in correct.items():
        by_level.setdefault(f"L{problems[i].level}", []).append(ok)
    summary = {level: sum(v) / len(v) for level, v in sorted(by_level.items())}
    summary["all"] = sum(correct.values()) / len(correct)
    return summary


# ---------------------------------------------------------------------------------------------- LM training


def train_lm(name: str, schedule: Schedule, out: Path, seed: int, log_path: Path, *, solutions: str = "fixed",
             attention: str = "eager", totals_fraction: float = 0.0, save_every: int = 0,
             teacher: Path | None = None, files: Mapping[str, str] | None = None) -> dict[str, object]:
    """Train one language model on the solution stream: next-token loss on the solutions, or, with ``teacher``,
    the teacher's next-token distribution at the same positions (distillation: where a problem has several right
    next steps, the data draw one at random, and a draft must learn which one its target picks). ``files`` (name:
    text, a preset) are saved in the model's folder with it."""
    remove_snapshots(out, name)
    seed_everything(seed)
    model = new_model(SHAPES[name], attention)
    teacher_model = None if teacher is None else load_model(teacher, attention)
    if teacher_model is not None:
        torch.nn.Module.eval(teacher_model)
    dev = generate(DEV_SEED, 96)
    dev_totals = generate_totals(DEV_SEED, 96) if totals_fraction else []

    def dev_scores() -> dict[str, object]:
        scores: dict[str, object] = {"dev_greedy": greedy_accuracy(model, dev)}
        if dev_totals:
            scores["dev_totals_greedy"] = greedy_accuracy(model, dev_totals)
        return scores

    def check(step: int) -> None:
        if step % 400 == 0:
            log(log_path, model=name, step=step, **dev_scores())
        if save_every and step % save_every == 0:
            # A snapshot on the way (at this step's learning rate, not the schedule's end): one long run then
            # shows where along its learning curve a benchmark target is met.
            save_lm(model, out / f"{name}-step{step}")

    log(log_path, event="start", model=name, params=n_params(model), schedule=asdict(schedule),
        shape=asdict(SHAPES[name]), seed=seed, solutions=solutions, attention=attention,
        totals_fraction=totals_fraction)
    batches = sft_batches(seed, schedule.tokens_per_batch, solutions, totals_fraction)
    started = time.time()
    # Dev scores every 400 steps and snapshots every save_every: check() is called at every multiple of either.
    running, tokens = masked_lm_steps(model, schedule, batches, log_path, name, check, every=math.gcd(400, save_every),
                                      teacher=teacher_model)
    train_s = time.time() - started
    final = dev_scores()
    result: dict[str, object] = {
        "model": name, "params": n_params(model), "train_s": round(train_s, 1), "tokens": tokens,
        "final_loss": round(running, 4), **final, "schedule": asdict(schedule),
        "shape": asdict(SHAPES[name]), "seed": seed, "varied": solutions == "varied", "attention": attention,
    }
    if solutions not in ("fixed", "varied"):
        result["solutions"] = solutions
    if teacher is not None:
        result["teacher"] = teacher.name
    if totals_fraction:
        result["totals_fraction"] = totals_fraction
    save_lm(model, out / name, {**(files or {}), "train_log.json": train_log(result)})
    log(log_path, event="done", **result)
    return result


def remove_snapshots(out: Path, name: str) -> None:
    """Remove the ``NAME-stepK`` snapshots an earlier run left in ``out``: beside this run's they would read as its
    own, and nothing in them says which run wrote them."""
    for folder in sorted(out.glob(f"{name}-step*")):
        if folder.is_dir() and re.fullmatch(rf"{re.escape(name)}-step\d+", folder.name):
            print(f"train_mini_models.py: removing {folder}, a snapshot of an earlier {name} run", file=sys.stderr,
                  flush=True)
            shutil.rmtree(folder)


def train_log(result: Mapping[str, object]) -> str:
    """``train_log.json``'s text, strict JSON: a figure that is not a number (an undefined AUROC, the loss of a run
    that diverged) is written null, as json.dumps would write NaN, which strict parsers refuse."""
    return json.dumps(finite(result), indent=2, allow_nan=False) + "\n"


def finite(value: object) -> object:
    """``value`` with every float that is NaN or infinite, at any depth of dicts and lists, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def save_lm(model: LlamaForCausalLM, directory: Path, files: Mapping[str, str] | None = None) -> None:
    """Ship weights in bfloat16 (what vLLM's CPU backend runs) with the tokenizer, generation defaults and
    ``files`` (name: text, the training log and a preset). All of it is written into a sibling folder that then
    takes ``directory``'s place, so a run stopped while saving leaves the old model or the whole new one: written
    in place, it left new weights beside the old train_log.json and prm.json, which ttc loads without a word.
    A ``directory`` that is a symlink has the folder it points to replaced, and stays a link to it."""
    directory = directory.resolve() if directory.is_symlink() else directory
    staging = beside(directory, "saving")
    remove(staging)  # what a save stopped before its swap left
    staging.mkdir(parents=True)
    try:
        write_lm(model, staging)
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, directory)


def beside(directory: Path, why: str) -> Path:
    """A hidden sibling of ``directory``: on the same file system, so that a rename moves it whole."""
    return directory.with_name(f".{directory.name}.{why}")


def swap_in(new: Path, directory: Path) -> None:
    """Put the folder ``new`` where ``directory`` is: the old one is renamed aside, the new one renamed in, and only
    then the old one removed (two renames: a folder cannot be replaced by another in one)."""
    old = beside(directory, "old")
    remove(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(new, directory)
    remove(old)


def remove(path: Path) -> None:
    """Remove what is at ``path``, if anything: a folder with its files, a file or a link (not where it points)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_lm(model: LlamaForCausalLM, directory: Path) -> None:
    # A copy of the config: the attention switch below must not reach the model in training.
    shipped = LlamaForCausalLM(copy.deepcopy(model.config))
    shipped.load_state_dict(model.state_dict())
    torch.nn.Module.to(shipped, torch.bfloat16)  # transformers' own to() is typed for other arguments
    shipped.config._attn_implementation = "sdpa"
    shipped.save_pretrained(directory)
    GenerationConfig.from_dict(
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "do_sample": False,
         "max_new_tokens": 256}
    ).save_pretrained(directory)
    save_tokenizer(directory, model.config.max_position_embeddings)


# ------------------------------------------------------------------------------------------------ synthesizer


SYNTHESIS_SEED = 600_000  # inside TRAIN_SEEDS, away from the chunks of the other stages
SYNTHESIS_PATHS = 8  # paths sampled per problem: the parallel_thinking strategy's default
# Paths per training example, drawn from the eight: mostly all of them, and some with none, so that the
# synthesizer's own solution without paths (the control for what the paths add) is in its training distribution.
SYNTHESIS_SIZES = (0, 1, 2, 4, 8, 8, 8, 8)
# The synthesis prompt of the mini templates: with the question (shipped), or the paths alone
# (``--synthesizer-prompt paths-only``), where solving alone is impossible and a path must be chosen.
SYNTHESIS_PROMPTS = {"question": MINI_SYNTHESIS_TEMPLATE,
                     "paths-only": MINI_SYNTHESIS_TEMPLATE.replace("{question}\n", "")}
SYNTHESIS = {"prompt": "question"}  # set by --synthesizer-prompt
SYNTHESIS_POSITIONS = 1536  # a level-8 question and eight different paths are about 1300 characters


def synthesis_example(question: str, paths: Sequence[str], solution: str) -> tuple[list[int], int]:
    """``BOS synthesis-prompt solution EOS`` and where the solution starts; the prompt is the strategy's own
    rendering (``ttc.strategies.synthesis``) with the mini templates."""
    text = render_synthesis(question, paths, SYNTHESIS_PROMPTS[SYNTHESIS["prompt"]], MINI_PATH_TEMPLATE)
    prompt = [BOS_ID, *encode(text)]
    return [*prompt, *encode(solution), EOS_ID], len(prompt)


def synthesis_paths(reasoner_dir: Path, cache_dir: Path, problems: Sequence[SyntheticProblem], samples: int,
                    seed: int) -> list[list[str]]:
    """``samples`` reasoner paths per problem at the strategies' temperature and nucleus, in the problems' order;
    cached like the PRM's samples, keyed by the reasoner's weights, the problems and the settings."""
    digest = hashlib.sha256((reasoner_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    asked = hashlib.sha256("\n".join(p.question for p in problems).encode()).hexdigest()[:8]
    path = cache_dir / (f"synthesis_paths_{digest}_{asked}_n{len(problems)}x{samples}_T{SAMPLE_TEMPERATURE}"
                        f"_p{TOP_P}_s{seed}.json")
    cached = read_cache(path)
    if cached is not None:
        return cached
    torch.manual_seed(seed)
    order = sorted(range(len(problems)), key=lambda i: problems[i].level)
    texts = complete(load_model(reasoner_dir), [mini_prompt(problems[i].question) for i in order],
                     samples=samples, temperature=SAMPLE_TEMPERATURE, top_p=TOP_P)
    paths: list[list[str]] = [[] for _ in problems]
    for i, sampled in zip(order, texts, strict=True):
        paths[i] = [clean(t) for t in sampled]
    write_cache(path, paths)
    return paths


def read_cache(path: Path) -> list[Any] | None:
    """A sample cache's list, or None when there is none or it is damaged (cut short by a stop or a full disk):
    a damaged one is said and sampled again, where it failed every later run with a raw JSONDecodeError."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except ValueError as exc:  # a cut file, or cut inside a character (UnicodeDecodeError)
        why = str(exc)
    else:
        if isinstance(cached, list):
            return cached
        why = "not a list"
    print(f"train_mini_models.py: the cache {path} is damaged ({why}); sampling again", file=sys.stderr, flush=True)
    return None


def write_cache(path: Path, value: object) -> None:
    """Write a sample cache whole or not at all: into a file beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def synthesis_target(problem: SyntheticProblem, shown: Sequence[str], target: str) -> str:
    """What the synthesizer learns to write after the paths ``shown``: the whole reference solution; its answer
    line alone (then it cannot solve the problem over again in its head and must conclude from the paths); or
    (``right-path``) the most common shown path that reaches the right answer, copied, and the reference solution
    only where none does (so it learns to pick a path to copy, and to solve where no path is right)."""
    if target == "solution":
        return problem.solution
    if target == "answer":
        return problem.solution.strip().splitlines()[-1]
    merged = [path.text for path in merge_paths([text.strip() for text in shown])]
    right = [text for text in merged if check_answer(problem, text)]
    if right:
        return right[0]
    # Shown only the paths, it cannot know the reference: where none is right it copies the most common.
    return merged[0] if SYNTHESIS["prompt"] == "paths-only" else problem.solution


def synthesis_data(problems: Sequence[SyntheticProblem], paths: Sequence[Sequence[str]], per_problem: int,
                   rng: random.Random, target: str) -> list[tuple[list[int], int]]:
    """``per_problem`` examples per problem, each a random subset of its paths (sizes from ``SYNTHESIS_SIZES``)
    with the reference's solution or answer as the target: right paths are to be kept, wrong ones outvoted or
    corrected."""
    data = []
    for problem, sampled in zip(problems, paths, strict=True):
        for _ in range(per_problem):
            sizes = SYNTHESIS_SIZES if SYNTHESIS["prompt"] == "question" else SYNTHESIS_SIZES[1:]
            chosen = rng.sample(list(sampled), rng.choice(sizes))
            data.append(synthesis_example(problem.question, chosen, synthesis_target(problem, chosen, target)))
    return data


def synthesis_scores(model: LlamaForCausalLM, problems: Sequence[SyntheticProblem],
                     paths: Sequence[Sequence[str]], reasoner_greedy: Sequence[str]) -> dict[str, float]:
    """On dev problems: the reasoner's greedy answer, the majority of its paths, any path right, and the
    synthesizer's solution with the paths and without them (its own skill, the control)."""
    template = SYNTHESIS_PROMPTS[SYNTHESIS["prompt"]]
    with_paths = complete(model, [render_synthesis(p.question, ps, template, MINI_PATH_TEMPLATE)
                                  for p, ps in zip(problems, paths, strict=True)])
    alone = complete(model, [render_synthesis(p.question, [], template, MINI_PATH_TEMPLATE)
                             for p in problems])

    def majority(texts: Sequence[str]) -> str | None:
        answers = [a for a in (extract_answer(t) for t in texts) if a is not None]
        return max(answers, key=answers.count) if answers else None

    n = len(problems)
    pairs = list(zip(problems, paths, with_paths, alone, strict=True))
    return {
        "reasoner_greedy": sum(check_answer(p, t) for p, t in zip(problems, reasoner_greedy, strict=True)) / n,
        "majority": sum(majority(ps) == p.answer for p, ps, _, _ in pairs) / n,
        "any_path": sum(any(check_answer(p, t) for t in ps) for p, ps, _, _ in pairs) / n,
        "synthesis": sum(check_answer(p, w[0]) for p, _, w, _ in pairs) / n,
        "synthesizer_alone": sum(check_answer(p, a[0]) for p, _, _, a in pairs) / n,
        # What it does with the paths: copy one verbatim, state their majority's answer, or write what it writes
        # without them (counts of problems).
        "copies_a_path": sum(w[0].strip() in {t.strip() for t in ps} for _, ps, w, _ in pairs),
        "states_the_majority": sum(extract_answer(w[0]) == majority(ps) for _, ps, w, _ in pairs),
        "same_as_alone": sum(w[0].strip() == a[0].strip() for _, _, w, a in pairs),
    }


def score_synthesizer(model_dir: Path, reasoner_dir: Path, seed: int, cache: Path) -> dict[str, float]:
    """A trained synthesizer's dev figures, as its training run logs them at the end (the same problems and
    paths: the paths come from the cache when the run left one)."""
    dev = generate(DEV_SEED, 96)
    dev_paths = synthesis_paths(reasoner_dir, cache, dev, SYNTHESIS_PATHS, seed + 1)
    dev_greedy = [t[0] for t in complete(load_model(reasoner_dir), [mini_prompt(p.question) for p in dev])]
    return synthesis_scores(load_model(model_dir), dev, dev_paths, dev_greedy)


def train_synthesizer(schedule: Schedule, out: Path, seed: int, log_path: Path, n_problems: int, per_problem: int,
                      attention: str, target: str) -> dict[str, object]:
    """Fine-tune a copy of the trained reasoner to read a question and eight of its own sampled paths and write
    the final solution (ParaThinker's recipe: one model, its own paths). Started from the reasoner, the
    synthesizer knows the problems as well as the policy; what it gains beyond its own solution without paths is
    what the paths give it."""
    seed_everything(seed)
    reasoner_dir = out / "reasoner"
    cache = log_path.parent / "cache"  # beside the run's log, as the PRM's samples are
    problems = generate(TRAIN_SEEDS.start + SYNTHESIS_SEED + seed * 10_000, n_problems)
    started = time.time()
    paths = synthesis_paths(reasoner_dir, cache, problems, SYNTHESIS_PATHS, seed)
    sampling_s = time.time() - started
    dev = generate(DEV_SEED, 96)
    dev_paths = synthesis_paths(reasoner_dir, cache, dev, SYNTHESIS_PATHS, seed + 1)
    reasoner = load_model(reasoner_dir)
    dev_greedy = [t[0] for t in complete(reasoner, [mini_prompt(p.question) for p in dev])]
    rng = random.Random(seed)
    data = synthesis_data(problems, paths, per_problem, rng, target)
    if not data:  # an endless stream of no batches would wait for good
        raise SystemExit("train_mini_models.py: no synthesizer examples to train on; raise --synthesizer-problems")
    model = load_model(reasoner_dir, attention)
    model.config.max_position_embeddings = SYNTHESIS_POSITIONS
    log(log_path, event="start", model="synthesizer", params=n_params(model), schedule=asdict(schedule), seed=seed,
        problems=n_problems, examples=len(data), sampling_s=round(sampling_s, 1), attention=attention, target=target,
        prompt=SYNTHESIS["prompt"])
    started = time.time()
    epochs = (collate(b) for _ in itertools.count() for b in length_batches(data, schedule.tokens_per_batch, rng))

    def check(step: int) -> None:
        log(log_path, model="synthesizer", step=step, dev=synthesis_scores(model, dev, dev_paths, dev_greedy))

    running, tokens = masked_lm_steps(model, schedule, epochs, log_path, "synthesizer", check, every=400)
    train_s = time.time() - started
    final = synthesis_scores(model, dev, dev_paths, dev_greedy)
    result: dict[str, object] = {
        "model": "synthesizer", "params": n_params(model), "train_s": round(train_s, 1),
        "sampling_s": round(sampling_s, 1), "tokens": tokens, "final_loss": round(running, 4), "dev": final,
        "schedule": asdict(schedule), "seed": seed, "problems": n_problems, "examples": len(data),
        "attention": attention, "start": "reasoner", "target": target, "prompt": SYNTHESIS["prompt"],
    }
    save_lm(model, out / "synthesizer", {"train_log.json": train_log(result)})
    log(log_path, event="done", **result)
    return result


# ------------------------------------------------------------------------------------- stateful reasoner


def stateful_examples(context: StatefulContext) -> list[tuple[list[int], int]]:
    """One context's examples for the stateful reasoner: its notes written from the context alone (sleep time),
    each question answered from the context alone (the notes' derivation written out, then the answer read from
    it), and each answered from the context and its notes (the answer read from them)."""

    def example(prompt: str, target: str) -> tuple[list[int], int]:
        ids = [BOS_ID, *encode(prompt)]
        return [*ids, *encode(target), EOS_ID], len(ids)

    items = [example(MINI_SLEEP_TEMPLATE.format(context=context.context), context.notes)]
    for query, noted in zip(context.queries, context.noted_solutions, strict=True):
        items.append(example(MINI_CONTEXT_TEMPLATE.format(context=context.context, notes="", question=query),
                             context.notes + noted))
        items.append(example(MINI_CONTEXT_TEMPLATE.format(context=context.context, notes=context.notes,
                                                          question=query), noted))
    return items


def recall_drill(rng: random.Random) -> tuple[list[int], int]:
    """A short list of ``Name: count`` lines and a question about one name, answered by reading its count back.

    In the context examples a count can be read back by guessing (the last one written, the first person's), and
    a model trained on them alone guessed; here every name is as likely to be asked and the counts are random, so
    only matching the name is right."""
    names = rng.sample(NAMES, rng.randint(3, 8))
    counts = {name: rng.randint(1, 199) for name in names}
    asked = rng.choice(names)
    prompt = [BOS_ID, *encode("".join(f"{n}: {c}\n" for n, c in counts.items())
                              + f"How many {rng.choice(OBJECTS)} does {asked} have?\n")]
    answer = f"{asked}: {counts[asked]}\n{ANSWER_PREFIX}{counts[asked]}."
    return [*prompt, *encode(answer), EOS_ID], len(prompt)


def stateful_batches(seed: int, tokens_per_batch: int, drills: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rng = random.Random(seed)
    drill_rng = random.Random(RECALL_SEED + seed)
    chunk = 0
    while True:
        contexts = generate_stateful(TRAIN_SEEDS.start + STATEFUL_SEED + seed * 10_000 + chunk, 128, 3)
        items = [item for context in contexts for item in stateful_examples(context)]
        items += [recall_drill(drill_rng) for _ in range(drills * len(contexts))]
        yield from (collate(batch) for batch in length_batches(items, tokens_per_batch, rng))
        chunk += 1


def drill_batches(seed: int, tokens_per_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Recall drills alone, for the warm-up that teaches reading a count back by name before the contexts."""
    rng = random.Random(seed)
    drill_rng = random.Random(RECALL_SEED + seed)
    while True:
        items = [recall_drill(drill_rng) for _ in range(2000)]
        yield from (collate(batch) for batch in length_batches(items, tokens_per_batch, rng))


def drill_score(model: LlamaForCausalLM, n: int = 200) -> float:
    """Greedy share of held-out recall drills whose whole answer (the name, its count, the answer line) is right."""
    rng = random.Random(RECALL_SEED - 1)  # the training streams draw from RECALL_SEED + seed, seed >= 0
    drills = [recall_drill(rng) for _ in range(n)]
    prompts = ["".join(VOCAB[i] for i in ids[1:start]) for ids, start in drills]
    texts = complete(model, prompts, max_new_tokens=40)
    targets = ["".join(VOCAB[i] for i in ids[start:-1]) for ids, start in drills]
    return sum(t[0] == target for t, target in zip(texts, targets, strict=True)) / n


def stateful_scores(model: LlamaForCausalLM, contexts: Sequence[StatefulContext]) -> dict[str, float]:
    """Greedy accuracy on the questions from the context alone, from the context and its true notes, and from
    the context and the model's own greedy notes; and the share of contexts whose notes it writes exactly."""
    notes = [t[0] for t in complete(model, [MINI_SLEEP_TEMPLATE.format(context=c.context) for c in contexts],
                                    max_new_tokens=STATEFUL_TOKENS)]
    exact = sum(n == c.notes for n, c in zip(notes, contexts, strict=True))
    scores: dict[str, float] = {"notes_exact": exact / len(contexts), "drills": drill_score(model)}
    for arm, written in (("raw", [""] * len(contexts)), ("true_notes", [c.notes for c in contexts]),
                         ("own_notes", [n if n.endswith("\n") else n + "\n" for n in notes])):
        prompts, problems = [], []
        for context, text in zip(contexts, written, strict=True):
            for query, problem in zip(context.queries, context.problems, strict=True):
                prompts.append(MINI_CONTEXT_TEMPLATE.format(context=context.context, notes=text, question=query))
                problems.append(problem)
        texts = complete(model, prompts, max_new_tokens=STATEFUL_TOKENS)
        scores[arm] = sum(check_answer(p, t[0]) for p, t in zip(problems, texts, strict=True)) / len(problems)
    return scores


def masked_lm_steps(model: LlamaForCausalLM, schedule: Schedule, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                    log_path: Path, name: str, check: Callable[[int], None], *, every: int = 1000,
                    teacher: LlamaForCausalLM | None = None) -> tuple[float, int]:
    """``schedule.steps`` steps of :func:`masked_lm_step` on ``batches`` with an optimizer of their own, logged as
    ``name``; ``check(step)`` after every ``every``-th step but the last (the caller checks the end). Returns the
    running loss and the tokens read."""
    optimizer = optimizer_for(model, schedule)
    started, tokens, running = time.time(), 0, 0.0
    model.train()
    for step in range(schedule.steps):
        ids, target_mask = next(batches)
        loss = masked_lm_step(model, optimizer, ids, target_mask, step, schedule, teacher)
        tokens += ids.numel()
        running = loss if step == 0 else 0.98 * running + 0.02 * loss
        log_progress(log_path, name, step, schedule, running, tokens, started)
        if (step + 1) % every == 0 and step + 1 < schedule.steps:
            check(step + 1)
            model.train()
    return running, tokens


def train_stateful(schedule: Schedule, out: Path, seed: int, log_path: Path, start: Path | None,
                   layers: int | None = None, drills: int = 0, drill_steps: int = 0) -> dict[str, object]:
    """Train the stateful reasoner on context questions, with and without notes, and on the notes: from
    ``start`` (a trained model of the family, which already copies names and numbers from its prompt), or from
    scratch; with ``drill_steps``, first that many steps of recall drills alone (a schedule of their own).

    Every answer ends by reading a count back by name, and mixed into the contexts that is a few tokens of each
    example, which a small character model learns last: trained on the contexts alone, the model shipped before
    read back a guess among the four counts. Drills alone start the matching, and the contexts, with drills still
    mixed in, train on top of it (docs/mini_models.md has the curves)."""
    seed_everything(seed)
    model = new_model(SHAPES["stateful"], "eager") if start is None else load_model(start, "eager")
    if layers is not None and layers < model.config.num_hidden_layers:
        # The first layers of a trained model: it already copies names and numbers, and the package's weights
        # stay within their size budget.
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    if drill_steps > 0:
        def drill_check(step: int) -> None:
            log(log_path, model="stateful-drills", step=step, drills=drill_score(model))

        masked_lm_steps(model, replace(schedule, steps=drill_steps), drill_batches(seed, schedule.tokens_per_batch),
                        log_path, "stateful-drills", drill_check)
        drill_check(drill_steps)
    dev = generate_stateful(DEV_SEED, 64, 3)
    shape = Shape(hidden=model.config.hidden_size, layers=model.config.num_hidden_layers,
                  heads=model.config.num_attention_heads, intermediate=model.config.intermediate_size)
    log(log_path, event="start", model="stateful", params=n_params(model), schedule=asdict(schedule),
        shape=asdict(shape), seed=seed, start=None if start is None else start.name, drills=drills,
        drill_steps=drill_steps)
    started = time.time()
    running, tokens = masked_lm_steps(
        model, schedule, stateful_batches(seed, schedule.tokens_per_batch, drills), log_path, "stateful",
        lambda step: log(log_path, model="stateful", step=step, dev=stateful_scores(model, dev)))
    train_s = time.time() - started
    scores = stateful_scores(model, dev)  # minutes: before the weights land, so a stop here leaves the old folder
    result: dict[str, object] = {
        "model": "stateful", "params": n_params(model), "train_s": round(train_s, 1), "tokens": tokens,
        "final_loss": round(running, 4), "dev": scores, "schedule": asdict(schedule),
        "shape": asdict(shape), "seed": seed, "start": None if start is None else start.name, "drills": drills,
        "drill_steps": drill_steps,
    }
    save_lm(model, out / "stateful", {"train_log.json": train_log(result)})
    log(log_path, event="done", **result)
    return result


# --------------------------------------------------------------------------------------------- PRM training


def prm_text(question: str, steps: Sequence[str]) -> str:
    """The PRM's input: the reasoner's prompt, then each step followed by the step tag (see prm.json)."""
    return mini_prompt(question) + STEP_DELIMITER.join(step + STEP_TAG for step in steps)


def prm_example(question: str, steps: Sequence[str], labels: Sequence[bool]) -> tuple[list[int], list[int]]:
    """Ids of the PRM input and, per tag, (position of the tag, 1 if good else 0) packed as two lists."""
    ids = [BOS_ID, *encode(prm_text(question, steps))]
    positions = [i for i, t in enumerate(ids) if t == TAG_ID]
    if len(positions) != len(labels):
        raise AssertionError("every step must carry exactly one tag")
    return ids, [p * 2 + int(ok) for p, ok in zip(positions, labels, strict=True)]


_PLAIN = set(CHARACTERS) - {STEP_TAG, GOOD_TOKEN, BAD_TOKEN}


def clean(text: str) -> str:
    """A sample up to its first character that is not plain text (a tag, a judgement or a special token)."""
    for i, ch in enumerate(text):
        if ch not in _PLAIN:
            return text[:i]
    return text


def sample_prm_data(reasoner: LlamaForCausalLM, problems: Sequence[SyntheticProblem], samples: int,
                    seed: int, temperature: float) -> list[tuple[list[int], list[int]]]:
    """Sample ``samples`` solutions per problem and label each step exactly (duplicates dropped)."""
    torch.manual_seed(seed)
    ordered = sorted(problems, key=lambda p: p.level)
    texts = complete(reasoner, [mini_prompt(p.question) for p in ordered], samples=samples, temperature=temperature)
    data = []
    for problem, solutions in zip(ordered, texts, strict=True):
        for text in dict.fromkeys(clean(s) for s in solutions):
            steps = split_steps(text)
            if not steps:
                continue
            data.append(prm_example(problem.question, steps, label_steps(problem, text)))
    return data


def _question_numbers(question: str) -> list[int]:
    return [int(tok) for tok in re.findall(r"\d+", question)]


def near_misses(problem: SyntheticProblem, k: int, rng: random.Random, count: int) -> list[str]:
    """Up to ``count`` distinct wrong lines for line ``k`` of the reference solution, in the reasoner's styles.

    Most of the reasoner's mistakes are not bad arithmetic but the wrong computation done right: the wrong
    operator for a sentence, an operand taken from another sentence, a sentence skipped or an answer given
    early. So most near misses here are well-formed, arithmetically true lines that are still the wrong step;
    a checker that only recomputes ``a op b`` cannot tell them apart, only one that follows the question can.
    """
    wrong: dict[str, None] = {}
    previous = [step.value for step in problem.steps[:k]]
    numbers = sorted(set(_question_numbers(problem.question)) | set(previous))
    tries = 0
    while len(wrong) < count and tries < 40 * count:
        tries += 1
        if k >= len(problem.steps):  # the answer line
            kind = rng.choice(["answer_value", "answer_value", "extra_step"])
            if kind == "answer_value":
                value = rng.choice([*previous, int(problem.answer) + rng.choice([-10, -2, -1, 1, 2, 10])])
                line = f"{ANSWER_PREFIX}{value}."
            else:
                line = f"{problem.answer} {rng.choice('+-*')} {rng.choice(numbers)} = {rng.randint(0, 60)}"
        else:
            ref = problem.steps[k]
            a_text, op, b_text = ref.expr.split(" ")
            a, b = int(a_text), int(b_text)
            kind = rng.choice(["operator", "operand", "operand", "arithmetic", "early_answer", "skip"])
            if kind == "operator":
                op = rng.choice([o for o in "+-*/" if o != op])
            elif kind == "operand":
                other = rng.choice([n for n in numbers if n not in (a, b)] or [a + 1])
                a, b = (other, b) if rng.random() < 0.5 else (a, other)
            elif kind == "early_answer":
                wrong[f"{ANSWER_PREFIX}{rng.choice([*previous, ref.value])}."] = None
                continue
            elif kind == "skip" and k + 1 < len(problem.steps):
                a_text, op, b_text = problem.steps[k + 1].expr.split(" ")
                a, b = int(a_text), int(b_text)
            computed = evaluate(a, op, b)
            if kind == "arithmetic" or computed is None or computed < 0:
                value = ref.value + rng.choice([d for d in (-10, -3, -2, -1, 1, 2, 3, 10) if ref.value + d >= 0])
            else:
                value = computed
            line = f"{a} {op} {b} = {value}"
        wrong[line] = None
    reference = split_steps(problem.solution)[:k]
    # A different computation with the right value, or the right answer given early, is not a wrong step.
    right_answer = f"{ANSWER_PREFIX}{problem.answer}."
    return [line for line in wrong
            if line != right_answer and not label_steps(problem, STEP_DELIMITER.join([*reference, line]))[-1]]


def contrastive_data(problems: Sequence[SyntheticProblem], per_problem: int,
                     rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """Each reference solution, and ``per_problem`` copies cut right after one near-miss line (see
    :func:`near_misses`) that follows a correct prefix.

    The reasoner's samples alone teach mostly "late steps of hard problems go wrong": that ranks steps across
    problems well but not one problem's candidates. A right and a wrong line under the same prefix are what
    make the PRM judge the step itself, which is what best-of-N and tree search ask of it.
    """
    data = []
    for problem in problems:
        lines = split_steps(problem.solution)
        data.append(prm_example(problem.question, lines, label_steps(problem, problem.solution)))
        for _ in range(per_problem):
            k = rng.randrange(len(lines))
            for line in near_misses(problem, k, rng, 1):
                text = STEP_DELIMITER.join([*lines[:k], line])
                data.append(prm_example(problem.question, split_steps(text), label_steps(problem, text)))
    return data


def prm_collate(batch: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    rows, cols, labels = [], [], []
    for row, (tokens, packed) in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        for code in packed:
            rows.append(row)
            cols.append(code // 2)
            labels.append(code % 2)
    return ids, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels)


def judgement_logits(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(n_tags, 2) logits of [bad, good] at each tag; softmax of it is the PRM's P(step correct)."""
    at_tags = logits[rows, cols]
    return torch.stack([at_tags[:, BAD_ID], at_tags[:, GOOD_ID]], dim=1)


@torch.no_grad()
def prm_eval(model: LlamaForCausalLM, data: Sequence[tuple[list[int], list[int]]]) -> dict[str, float | None]:
    """AUROC of the PRM's step scores on ``data``, None where it is undefined (the steps are all right or all
    wrong): NaN is not JSON, and the training log must stay readable by strict parsers."""
    torch.nn.Module.eval(model)
    scores: list[float] = []
    labels: list[bool] = []
    for start in range(0, len(data), 32):
        ids, rows, cols, y = prm_collate(data[start : start + 32])
        scores += judgement_logits(model(input_ids=ids).logits, rows, cols).softmax(-1)[:, 1].tolist()
        labels += [bool(v) for v in y.tolist()]
    area = auroc(scores, labels)
    return {"auroc": None if math.isnan(area) else round(area, 4), "steps": len(labels),
            "good_fraction": round(sum(labels) / max(1, len(labels)), 4)}


def solution_lm_mask(ids: torch.Tensor, batch: Sequence[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Next-token targets to keep the reasoner's skill in the PRM: the solution tokens (not tags, not the
    question) of examples whose every step is right, so the PRM still knows what the next step should be."""
    mask = torch.zeros_like(ids, dtype=torch.bool)
    newline = VOCAB.index(STEP_DELIMITER)
    for row, (tokens, packed) in enumerate(batch):
        if all(code % 2 for code in packed):
            mask[row, tokens.index(newline) : len(tokens) - 1] = True
    targets = torch.roll(ids, -1, dims=1)
    return mask & (targets != TAG_ID) & (targets != PAD_ID)


def cached_samples(reasoner_dir: Path, cache_dir: Path, problems: Sequence[SyntheticProblem], samples: int,
                   seed: int) -> tuple[list[tuple[list[int], list[int]]], float]:
    """The reasoner's labelled samples, from a cache keyed by its weights, the problems and the settings when
    there is one: sampling is the slow part of PRM training, and it does not change while the PRM's recipe is
    tuned."""
    digest = hashlib.sha256((reasoner_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    asked = hashlib.sha256("\n".join(p.question for p in problems).encode()).hexdigest()[:8]
    path = cache_dir / f"prm_samples_{digest}_{asked}_n{len(problems)}x{samples}_T{SAMPLE_TEMPERATURE}_s{seed}.json"
    cached = read_cache(path)
    if cached is not None:
        return [(ids, packed) for ids, packed in cached], 0.0
    started = time.time()
    data = sample_prm_data(load_model(reasoner_dir), problems, samples, seed, SAMPLE_TEMPERATURE)
    write_cache(path, data)
    return data, time.time() - started


def prm_problems(seed: int, stateful_seed: int, n: int, totals_seed: int = 0, totals_fraction: float = 0.0
                 ) -> list[SyntheticProblem]:
    """The PRM's problems: :func:`problem_mix` over all eight levels, not cut to ``n``; none for ``n`` 0 (the mix
    adds a context's questions to any ``n``, and --prm-contrastive-problems 0 trained three while logging 0)."""
    if n == 0:
        return []
    return problem_mix(seed, stateful_seed, totals_seed, n, totals_fraction)


def train_prm(schedule: Schedule, out: Path, seed: int, log_path: Path, n_problems: int, samples: int,
              contrastive_problems: int, near_miss_count: int, lm_weight: float,
              init: Path, totals_fraction: float = 0.0, attention: str = "eager") -> dict[str, object]:
    seed_everything(seed)
    problems = prm_problems(PRM_DATA_SEED + seed, PRM_DATA_SEED + 50_000 + seed, n_problems,
                            PRM_DATA_SEED + 80_000 + seed, totals_fraction)
    data, sample_s = cached_samples(out / "reasoner", log_path.parent, problems, samples, seed)
    rng = random.Random(seed)
    rng.shuffle(data)
    # Held-out steps are the reasoner's own, as in use; they are held-out samples, not problems (a problem's other
    # samples may train), so the log's AUROC on them reads high: the model card measures on held-out problems.
    held = data[: len(data) // 10]
    paired = prm_problems(PRM_DATA_SEED + 60_000 + seed, PRM_DATA_SEED + 70_000 + seed, contrastive_problems,
                          PRM_DATA_SEED + 90_000 + seed, totals_fraction)
    train = data[len(data) // 10 :] + contrastive_data(paired, near_miss_count, rng)
    log(log_path, event="prm_data", samples=len(data), sample_s=round(sample_s, 1), train=len(train),
        tags=sum(len(p) for _, p in data), good=sum(c % 2 for _, p in data for c in p))
    # A judge must know the right step better than the policy it judges: it starts from the checker LM (the
    # reasoner's shape and data, trained longer), as 1B policies are searched against 8B PRMs in practice.
    model = load_model(init, attention)
    log(log_path, model="prm", step=0, held_out=prm_eval(model, held))
    optimizer = optimizer_for(model, schedule)
    started = time.time()
    step = 0
    running = 0.0
    while step < schedule.steps:
        for batch in length_batches(train, schedule.tokens_per_batch, rng):
            if step >= schedule.steps:
                break
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, schedule)
            ids, rows, cols, y = prm_collate(batch)
            logits = model(input_ids=ids).logits
            loss = F.cross_entropy(judgement_logits(logits, rows, cols), y)
            lm_mask = solution_lm_mask(ids, batch)
            if lm_weight and lm_mask.any():
                loss = loss + lm_weight * F.cross_entropy(logits[lm_mask], torch.roll(ids, -1, dims=1)[lm_mask])
            apply_step(model, optimizer, loss)
            running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
            if step % 50 == 0:
                log(log_path, model="prm", step=step, loss=round(running, 4),
                    elapsed_s=round(time.time() - started, 1))
            if (step + 1) % 300 == 0:
                log(log_path, model="prm", step=step + 1, held_out=prm_eval(model, held))
            step += 1
    train_s = time.time() - started
    held_scores = prm_eval(model, held)
    result: dict[str, object] = {
        "model": "prm", "params": n_params(model), "sample_s": round(sample_s, 1), "train_s": round(train_s, 1),
        "problems": len(problems), "samples_per_problem": samples, "sample_temperature": SAMPLE_TEMPERATURE,
        "contrastive_problems": contrastive_problems, "near_misses_per_problem": near_miss_count,
        "lm_weight": lm_weight, "train_solutions": len(train), "labelled_solutions": len(data),
        "final_loss": round(running, 4), "held_out": held_scores, "schedule": asdict(schedule), "seed": seed,
        "init": init.name, "attention": attention,
    }
    save_lm(model, out / "prm", {"prm.json": prm_preset(), "train_log.json": train_log(result)})
    log(log_path, event="done", **result)
    return result


def prm_preset() -> str:
    """``prm.json`` in :class:`ttc.verifiers.prm_presets.PRMPreset`'s keys: a token (Math-Shepherd-style) PRM
    whose input is exactly :func:`prm_text` (the separator after the last tag does not change any score)."""
    preset = {
        "family": "token",
        "tag": STEP_TAG,
        "good": GOOD_TOKEN,
        "bad": BAD_TOKEN,
        "prefix": mini_prompt("{question}"),
        "step_template": "{step}",
        "separator": STEP_DELIMITER,
        "top_k": VOCAB_SIZE,
    }
    return json.dumps(preset, indent=2, ensure_ascii=False) + "\n"


def checker_preset() -> str:
    """``prm.json`` for the checker: a likelihood verifier over the reasoner's own prompt and step format."""
    preset = {"family": "likelihood", "prefix": mini_prompt("{question}"), "step_template": "{step}",
              "separator": STEP_DELIMITER}
    return json.dumps(preset, indent=2) + "\n"


# ------------------------------------------------------------------------------------------------------ main


def draft_shape(text: str) -> Shape:
    """``HIDDENxLAYERS``, e.g. ``192x2``: the draft's shape, with heads of 32 dimensions."""
    hidden, _, layers = text.partition("x")
    if not (hidden.isdigit() and layers.isdigit()) or int(hidden) % 32 or int(hidden) < 32 or int(layers) < 1:
        raise argparse.ArgumentTypeError(f"expected HIDDENxLAYERS with HIDDEN a multiple of 32, got {text!r}")
    width = int(hidden)
    return Shape(hidden=width, layers=int(layers), heads=width // 32, intermediate=round(width * 2.75 / 16) * 16)


def count(least: int) -> Callable[[str], int]:
    """An argparse type: an int of at least ``least`` (0 steps saved an untrained model as if trained)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an int >= {least}, got {value}")
        return value

    return parse


def rate(*, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float above 0 (at least 0 with ``zero``): a NaN weight trained a NaN model."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if zero else '>'} 0, got {text!r}")
        return value

    return parse


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what a stage reads of an earlier one


def has_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model a stage can read: a save stopped in a fresh folder left config.json alone."""
    return all((folder / name).is_file() for name in MODEL_FILES)


def writable_at(path: Path) -> tuple[bool, Path]:
    """Whether ``path`` can be made or written, and the nearest existing folder at or above it that decides it."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK), existing


def check_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse, before any work, an --out that cannot be written, a stage whose earlier stage's model is missing
    from --out, and a --save-every that would save nothing (found late, they failed as a download attempt or a raw
    traceback after minutes of training or sampling, or were silently ignored)."""
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; pass a folder (the models are written into DIR/NAME)")
    writable, existing = writable_at(args.out)
    if args.score_synthesizer is None and not writable:
        parser.error(f"--out {args.out} cannot be written ({existing} is not a writable folder); pass a folder "
                     f"that can be written or made")
    needs = {"draft": ["reasoner"] if args.draft_from == "reasoner" else [], "prm": ["reasoner", "checker"],
             "synthesizer": ["reasoner"],
             "stateful": [] if args.stateful_from == "scratch" else [args.stateful_from]}.get(args.stage, [])
    reader = f"--stage {args.stage}"
    if args.score_synthesizer is not None:  # it trains nothing: the paths it scores come from --out's reasoner
        if not has_model(args.score_synthesizer):
            parser.error(f"--score-synthesizer {args.score_synthesizer} has no complete model "
                         f"({', '.join(MODEL_FILES)})")
        needs, reader = ["reasoner"], "--score-synthesizer"
    for name in needs:  # --stage all trains each before it is read
        folder = args.out / name
        if not has_model(folder):
            parser.error(f"{reader} reads the trained {name} from {folder}, which has no complete model "
                         f"({', '.join(MODEL_FILES)}): train it first (--stage {name} --out {args.out}), or pass the "
                         f"--out that holds it")
    if args.save_every and args.score_synthesizer is None:
        check_save_every(args, parser)
    # The log is first written when training starts, and its folder made only then: a folder named as the log, or
    # a file among its parents, failed after the data was drawn.
    if args.log.is_dir():
        parser.error(f"--log {args.log} is a folder; pass a file to append the training log to")
    writable, existing = writable_at(args.log.parent)
    if not writable:
        parser.error(f"--log {args.log} cannot be written ({existing} is not a writable folder); pass a file in a "
                     f"writable folder")


def check_save_every(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Snapshots are taken by the reasoner, draft and checker runs at each multiple of --save-every below their
    steps: one that no run of this --stage reaches was ignored without a word."""
    steps = {name: getattr(args, f"{name}_steps") for name in ("reasoner", "draft", "checker")
             if args.stage in ("all", name)}
    if not steps:
        parser.error(f"--save-every snapshots the reasoner, draft and checker; --stage {args.stage} trains none of "
                     f"them: leave --save-every out")
    if all(args.save_every >= n for n in steps.values()):
        parser.error(f"--save-every {args.save_every} would save no snapshot: it must be below the steps of a model "
                     f"this run trains ({', '.join(f'--{name}-steps {n}' for name, n in steps.items())})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["all", "reasoner", "draft", "checker", "prm", "stateful", "synthesizer"],
                        default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "ttc/models/mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reasoner-steps", type=count(1), default=1600)
    parser.add_argument("--draft-steps", type=count(1), default=3000)
    parser.add_argument("--checker-steps", type=count(1), default=4000)
    parser.add_argument("--prm-steps", type=count(1), default=1200)
    parser.add_argument("--stateful-steps", type=count(1), default=6000,
                        help="steps on context questions, after the recall drills")
    parser.add_argument("--stateful-from", choices=["draft", "checker", "scratch"], default="draft",
                        help="start the stateful reasoner from the trained draft (the shipped one), from the first "
                        "--stateful-layers layers of the trained checker, or from scratch (192x4)")
    parser.add_argument("--stateful-layers", type=count(1), default=3,
                        help="with --stateful-from checker: the layers kept (three fit the package's size budget)")
    parser.add_argument("--stateful-lr", type=rate(zero=False), default=1e-3)
    parser.add_argument("--stateful-drills", type=count(0), default=4,
                        help="recall drills per training context (a list of Name: count lines and a question)")
    parser.add_argument("--stateful-drill-steps", type=count(0), default=8000,
                        help="steps of recall drills alone before the contexts, on a schedule of their own")
    parser.add_argument("--prm-problems", type=count(1), default=720)
    parser.add_argument("--prm-samples", type=count(1), default=8)
    parser.add_argument("--prm-contrastive-problems", type=count(0), default=4000,
                        help="reference solutions shown with near-miss copies")
    parser.add_argument("--prm-near-misses", type=count(0), default=4, help="near-miss copies per reference solution")
    parser.add_argument("--prm-lm-weight", type=rate(zero=True), default=0.3, help="weight of the kept next-step loss")
    parser.add_argument("--prm-lr", type=rate(zero=False), default=3e-4)
    parser.add_argument("--log", type=Path, default=Path("runs/train_mini_models.jsonl"))
    parser.add_argument("--solutions", choices=sorted(SOLUTIONS), default="fixed",
                        help="train the language models on the fixed reference order (the shipped models) or on "
                        "valid solutions drawn per example: varied (ttc.bench.synthetic.varied_solution: the same "
                        "values in another order), commuted (ttc.bench.groupings.commuted_solution: additions and "
                        "subtractions in another order, so other intermediate counts), grouped (grouped_solution: "
                        "also gains or losses totalled first) or grouped-swapped (and operands either way round)")
    parser.add_argument("--attention", choices=["eager", "sdpa"], default="eager",
                        help="attention while training the reasoner and the draft (the shipped models: eager; sdpa "
                        "is 1.3x faster per step but moves a reasoner on the steep part of its curve)")
    parser.add_argument("--judge-attention", choices=["eager", "sdpa"], default="sdpa",
                        help="attention while training the checker and the PRM (the shipped models: sdpa; the "
                        "docs/mini_models.md compares them with the eager-trained pair)")
    parser.add_argument("--totals-fraction", type=float, default=0.0,
                        help="share of the training problems that are totals questions (ttc.bench.totals), each "
                        "with its own grouping of the sum; the shipped models: 0")
    parser.add_argument("--save-every", type=count(0), default=0,
                        help="also save the reasoner, draft and checker every this many steps (below their "
                        "steps), as DIR/NAME-stepK, removing the NAME-stepK an earlier run left (0: only at the end)")
    parser.add_argument("--draft-from", choices=["data", "reasoner"], default="data",
                        help="train the draft on the solutions themselves, or on the trained reasoner's next-token "
                        "distribution over them (distillation: where several next steps are right, the draft "
                        "learns the one the reasoner picks)")
    parser.add_argument("--draft-shape", type=draft_shape, default=None, metavar="HIDDENxLAYERS",
                        help="the draft's width and depth instead of the shipped 128x4 (heads of 32 dimensions, "
                        "an MLP 2.75x as wide)")
    parser.add_argument("--threads", type=count(1), default=2)
    parser.add_argument("--synthesizer-steps", type=count(1), default=800)
    parser.add_argument("--synthesizer-problems", type=count(1), default=2400,
                        help="training problems, eight reasoner paths each")
    parser.add_argument("--synthesizer-examples", type=count(1), default=3,
                        help="training examples per problem, each a random subset of its paths")
    parser.add_argument("--score-synthesizer", type=Path, default=None, metavar="DIR",
                        help="print the dev figures of the synthesizer in DIR (paths from --out's reasoner) and stop")
    parser.add_argument("--synthesizer-prompt", choices=sorted(SYNTHESIS_PROMPTS), default="question",
                        help="what the synthesizer is shown: the question and the paths, or the paths alone")
    parser.add_argument("--synthesizer-target", choices=["solution", "right-path", "answer"], default="solution",
                        help="what the synthesizer learns to write after the paths: the reference solution (the "
                             "shipped one), the most common right path (the reference where none is right), or the "
                             "answer line")
    args = parser.parse_args(argv)
    if args.stateful_layers > SHAPES["checker"].layers:
        parser.error(f"--stateful-layers keeps the checker's first layers: 1 to {SHAPES['checker'].layers}, got "
                     f"{args.stateful_layers}")
    check_inputs(args, parser)
    if args.draft_shape is not None:
        SHAPES["draft"] = args.draft_shape
    if not 0.0 <= args.totals_fraction <= 0.875:
        parser.error(f"--totals-fraction must be in [0, 0.875] (an eighth are context questions, the rest word "
                     f"problems), got {args.totals_fraction}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    highest = highest_data_seed(args, args.seed)
    if highest >= TRAIN_SEEDS.stop:
        # Every term grows with the seed by at most 10_000 a step, so the largest seed that fits is found at once.
        largest = next((seed for seed in range(min(args.seed, TRAIN_SEEDS.stop // 10_000), -1, -1)
                        if highest_data_seed(args, seed) < TRAIN_SEEDS.stop), None)
        if largest is None:
            parser.error(f"the step counts draw training problems up to seed {highest_data_seed(args, 0)} even at "
                         f"--seed 0, outside TRAIN_SEEDS [{TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop}) where the held-out "
                         "problems live: use fewer steps")
        parser.error(f"--seed {args.seed} would draw training problems from seed {highest}, outside TRAIN_SEEDS "
                     f"[{TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop}) where the held-out problems live; use a seed in "
                     f"[0, {largest}]")
    torch.set_num_threads(args.threads)
    SYNTHESIS["prompt"] = args.synthesizer_prompt
    if args.score_synthesizer is not None:
        print(json.dumps(score_synthesizer(args.score_synthesizer, args.out / "reasoner", args.seed,
                                           args.log.parent / "cache")))
        return
    lm = {"solutions": args.solutions, "attention": args.attention, "totals_fraction": args.totals_fraction,
          "save_every": args.save_every}
    args.log.parent.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "reasoner"):
        train_lm("reasoner", Schedule(steps=args.reasoner_steps, tokens_per_batch=2048, lr=1e-3), args.out,
                 args.seed, args.log, **lm)
    if args.stage in ("all", "draft"):
        train_lm("draft", Schedule(steps=args.draft_steps, tokens_per_batch=2048, lr=2e-3), args.out,
                 args.seed + 1, args.log, **lm,
                 teacher=args.out / "reasoner" if args.draft_from == "reasoner" else None)
    if args.stage in ("all", "checker"):
        train_lm("checker", Schedule(steps=args.checker_steps, tokens_per_batch=2048, lr=1e-3), args.out,
                 args.seed + 2, args.log, **{**lm, "attention": args.judge_attention},
                 files={"prm.json": checker_preset()})
    if args.stage in ("all", "prm"):
        train_prm(Schedule(steps=args.prm_steps, tokens_per_batch=3072, lr=args.prm_lr, warmup=50), args.out,
                  args.seed, args.log, args.prm_problems, args.prm_samples, args.prm_contrastive_problems,
                  args.prm_near_misses, args.prm_lm_weight, args.out / "checker", args.totals_fraction,
                  args.judge_attention)
    if args.stage in ("all", "synthesizer"):
        train_synthesizer(Schedule(steps=args.synthesizer_steps, tokens_per_batch=8192, lr=5e-4, warmup=50),
                          args.out, args.seed, args.log, args.synthesizer_problems, args.synthesizer_examples,
                          args.judge_attention, args.synthesizer_target)
    if args.stage in ("all", "stateful"):
        start = None if args.stateful_from == "scratch" else args.out / args.stateful_from
        train_stateful(Schedule(steps=args.stateful_steps, tokens_per_batch=2048, lr=args.stateful_lr), args.out,
                       args.seed + 3, args.log, start,
                       args.stateful_layers if args.stateful_from == "checker" else None, args.stateful_drills,
                       args.stateful_drill_steps)


def highest_data_seed(args: argparse.Namespace, seed: int) -> int:
    """The largest problem seed the stages this --stage trains draw for ``seed``; each must stay in TRAIN_SEEDS, or
    training would draw the held-out problems. The language models read chunk seeds (seed + k) * 10_000 + chunk
    (k 0, 1, 2 for the reasoner, draft and checker; fewer chunks than steps) offset up to TOTALS_SEED; the PRM
    PRM_DATA_SEED + 90_000 + seed; the synthesizer SYNTHESIS_SEED + seed * 10_000; the stateful reasoner
    STATEFUL_SEED + (seed + 3) * 10_000 + chunk (its recall drills draw no problems)."""
    def runs(name: str) -> bool:
        return bool(args.stage in ("all", name))

    language_models = {"reasoner": args.reasoner_steps, "draft": args.draft_steps, "checker": args.checker_steps}
    drawn: list[int] = [(seed + k) * 10_000 + steps + TOTALS_SEED
                        for k, (name, steps) in enumerate(language_models.items()) if runs(name)]
    if runs("prm"):
        drawn.append(PRM_DATA_SEED + 90_000 + seed)
    if runs("synthesizer"):
        drawn.append(SYNTHESIS_SEED + seed * 10_000)
    if runs("stateful"):
        drawn.append(STATEFUL_SEED + (seed + 3) * 10_000 + args.stateful_steps)
    return max(drawn)


if __name__ == "__main__":
    main()
