#!/usr/bin/env python3
"""How much test-time compute buys with the bundled mini models, on held-out synthetic problems.

    python3 benchmarks/mini_models.py            # 480 problems from EVAL_SEEDS, 16 samples each (~11 min, 2 cores)
    python3 benchmarks/mini_models.py --n 160    # quicker, but a figure moves by several points with the draw
    python3 benchmarks/mini_models.py --policy checker --levels 5-8 --n 80   # a longer-trained policy's vote
    python3 benchmarks/mini_models.py --reasoner DIR --seed 1500000 --n 240  # a candidate reasoner, on the dev seed
    python3 benchmarks/mini_models.py --family totals --reasoner DIR           # totals questions (ttc.bench.totals)
    python3 benchmarks/mini_models.py --family mix --reasoner DIR --checker DIR  # half word problems, half totals
    python3 benchmarks/mini_models.py --seed 1500000 --n 240 --calculator  # the same policy if it never slipped
    python3 benchmarks/mini_models.py --distinct  # the 16 samples drawn without replacement (ttc's local engine)

Measured, per level and overall: the reasoner's greedy accuracy; majority vote over 16 samples, the same
vote as if different wrong chains never shared an answer (so coinciding wrong answers cannot be blamed), the
vote among the samples that write no wrong result for an equation (``maj16_arith``: ``check_arithmetic`` of the
sampling strategies, so what arithmetic slips cost the vote) and among those that also compute only with numbers
the question or an earlier line gives (``maj16_checked``: ``check_operands`` too), and how
often the vote returns the greedy answer, right or wrong (``maj16=greedy``); best of the
same 16 samples ranked by the mini PRM (step scores aggregated by min, last step, product); best of them by the
mini checker (likelihood), by min (StepwiseOutcome's default), by product and among the samples that compute
right (``bo16_checker_arith``) or pass both checks (``bo16_checker_checked``), and a vote weighted by its min;
pass@16 (an oracle ceiling), and the share of problems with a sample whose every step is right (the ceiling
of any verifier that judges steps). Also each verifier's step AUROC on the samples' exactly labelled steps (the
steps of each distinct sample, and the distinct steps, a prefix that several samples share counted once), how often
it ranks a right next step above a wrong one after the same prefix, and how often the draft model's greedy next
step equals the reasoner's own greedy next step. Inference is plain ``transformers`` ``generate`` on CPU; with
``--distinct`` the samples are drawn without replacement instead (``Sampling(distinct=True)``: ttc's local engine,
by stochastic beam search), so a problem has up to 16 different samples, fewer where the sampling distribution
has fewer texts, and every per-sample figure counts the samples drawn.
``--dump FILE`` writes every problem's greedy answer, samples and step scores as JSON lines, so another
selection rule can be scored on the same samples without sampling again. The last line is ``name=value`` pairs
for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import cast

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: do not spin while waiting

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, when a test loads it by path
from arguments import (
    at_least_one,
    model_folder,
    probability,
    run_or_exit,
    run_script,
    sampling_temperature,
    torch_seed,
)

from ttc.backends.local import LocalBackend
from ttc.bench.synthetic import (
    EVAL_SEEDS,
    SyntheticProblem,
    check_answer,
    evaluate,
    extract_answer,
    generate,
    label_steps,
    split_steps,
)
from ttc.bench.totals import generate_totals
from ttc.errors import ConfigError
from ttc.models import mini_model_path, mini_prompt
from ttc.strategies.base import TEMPERATURE, TOP_P
from ttc.strategies.sampling import Checks
from ttc.types import Sampling
from ttc.verifiers.metrics import auroc
from ttc.verifiers.prm_presets import PRMPreset, get_preset


def load_model(path: Path) -> PreTrainedModel:
    """A causal LM in float32, in inference mode, that reads the mini models' tokens and has every weight.

    Every model here is fed the shipped reasoner's token ids, and transformers fills a weight the folder lacks (an
    ``lm_head``) with random numbers without a word: either way the figures would describe a broken model.
    """
    _check_vocabulary(path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                      output_loading_info=True)
    except (OSError, ValueError, SafetensorError) as exc:
        # No weights file, or one cut short by a stopped save: the loader's own traceback named neither the
        # folder nor what to do.
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model folder {path} cannot be loaded ({why}): pass a complete checkpoint of a mini "
                          f"model, or train it again") from exc
    # With output_loading_info the call returns the model and what loading found, which its stubs do not say.
    model, info = cast(tuple[PreTrainedModel, dict[str, list[str]]], loaded)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ConfigError(f"model folder {path} lacks weights {', '.join(missing[:3])}"
                          f"{' ...' if len(missing) > 3 else ''}: pass a complete checkpoint of a mini model")
    torch.nn.Module.eval(model)  # transformers' own eval() is untyped
    return model


def _vocabulary(path: Path) -> object:
    try:
        return json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_vocabulary(path: Path) -> None:
    if _vocabulary(path) != _vocabulary(mini_model_path("reasoner")):
        raise ConfigError(f"model folder {path} does not use the mini models' tokenizer (its tokenizer.json is "
                          f"missing or has another vocabulary): pass a model trained with ttc/models/mini's tokenizer")


class Models:
    def __init__(self, prm_dir: Path | None = None, checker_dir: Path | None = None,
                 reasoner_dir: Path | None = None, draft_dir: Path | None = None) -> None:
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(mini_model_path("reasoner"),
                                                                                     local_files_only=True)
        self.tokenizer.padding_side = "left"
        self.reasoner = load_model(reasoner_dir or mini_model_path("reasoner"))
        self.draft = load_model(draft_dir or mini_model_path("draft"))
        self.prm = load_model(prm_dir or mini_model_path("prm"))
        self.checker = load_model(checker_dir or mini_model_path("checker"))
        self.checker_preset = get_preset("mini-checker")
        self.preset = get_preset("mini")
        ids = self.tokenizer.convert_tokens_to_ids
        self.tag_id = ids(self.preset.tag)
        self.good_id = ids(self.preset.good)
        self.bad_id = ids(self.preset.bad)


class Calculator(LogitsProcessor):
    """Writes the result of each line ``a op b = `` itself, digit by digit, whatever the model would write there.

    A diagnostic (``--calculator``): with every computation right, what is left of a policy's mistakes is its
    reading of the question. Only a line that is one binary equation of whole numbers with a whole result is
    filled in (the solutions' format); the character-level tokenizer makes each digit one token.
    """

    _LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d*)$")

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.chars = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.newline = tokenizer.convert_tokens_to_ids("\n")
        self.ids = {c: i for i, c in enumerate(self.chars)}
        self.number_ids = [self.ids[c] for c in "0123456789."]

    def _result(self, line: str) -> tuple[str, str] | None:
        match = self._LINE.match(line)
        if match is None:
            return None
        value = evaluate(int(match[1]), match[2], int(match[3]))
        return (str(value), match[4]) if value is not None and value >= 0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids.tolist()):
            line: list[str] = []
            for token in reversed(ids[-24:]):
                if token == self.newline:
                    break
                line.append(self.chars[token])
            else:
                continue  # no line start in reach: not one of the format's equations
            found = self._result("".join(reversed(line)))
            if found is None or not found[0].startswith(found[1]):
                continue
            result, written = found
            if len(written) < len(result):
                scores[row, :] = -math.inf
                scores[row, self.ids[result[len(written)]]] = 0.0
            else:
                scores[row, self.number_ids] = -math.inf  # the result is whole: the number ends here
        return scores


@torch.no_grad()
def complete(models: Models, model: PreTrainedModel, prompts: Sequence[str], *, samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 170,
             rows: int = 128, calculator: bool = False) -> list[list[str]]:
    """``samples`` completions per prompt, greedy when ``temperature`` is 0; text only, cut at EOS. With
    ``calculator``, each equation's result is written by ``Calculator``, not the model."""
    tok = models.tokenizer
    out: list[list[str]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths finish together
    per_batch = max(1, rows // samples)
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        enc = tok([prompts[i] for i in chunk], return_tensors="pt", padding=True)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p} if temperature else {
            "do_sample": False}
        processors = LogitsProcessorList([Calculator(tok)] if calculator else [])
        generator = cast(GenerationMixin, model)  # PreTrainedModel alone does not declare generate()
        gen = generator.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 logits_processor=processors, **sampling)
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for row, text in enumerate(texts):
            out[chunk[row // samples]].append(text)
    return out


def complete_distinct(folder: Path, prompts: Sequence[str], *, samples: int, temperature: float, top_p: float,
                      seed: int, threads: int, max_new_tokens: int = 170) -> tuple[list[list[str]], int]:
    """Up to ``samples`` different completions per prompt, drawn without replacement by ttc's local engine, and
    the tokens the engine decoded for them (a prefix that samples share is decoded once)."""

    async def run() -> tuple[list[list[str]], int]:
        backend = LocalBackend.from_pretrained(folder, max_batch=128, threads=threads)
        gate = asyncio.Semaphore(8)  # 8 beams of 16 fill a decode step

        async def one(index: int, prompt: str) -> list[str]:
            async with gate:
                ids = await backend.tokenize(prompt, add_special_tokens=True)
                drawn = await backend.complete(ids, samples, Sampling(
                    max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed * 1_000_000 + index,
                    distinct=True))
                for c in drawn:
                    await backend.release([*ids, *c.token_ids])
                return [c.text for c in drawn]

        try:
            texts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
            return list(texts), backend.stats().generated_tokens
        finally:
            await backend.aclose()

    return asyncio.run(run())


def plain(text: str, preset: PRMPreset) -> str:
    """A sample cut before any tag or judgement character, which a solution never legitimately contains."""
    reserved = {preset.tag, preset.good, preset.bad}
    cut = next((i for i, ch in enumerate(text) if ch in reserved), len(text))
    return text[:cut]



def prm_folder(text: str) -> Path:
    """A candidate PRM folder: the benchmark scores with the shipped PRM's preset, so a folder whose ``prm.json``
    says another format (or that has none: a policy's folder) would be scored by rules it was not trained on."""
    path = model_folder(text)
    shipped = json.loads((mini_model_path("prm") / "prm.json").read_text(encoding="utf-8"))
    try:
        own = json.loads((path / "prm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        own = None
    if own != shipped:
        raise argparse.ArgumentTypeError(f"must be a PRM folder whose prm.json is the shipped PRM's (the benchmark "
                                         f"scores with that preset), got {text!r}")
    return path

@torch.no_grad()
def prm_step_scores(models: Models, questions: Sequence[str], solutions: Sequence[list[str]],
                    batch: int = 64) -> list[list[float]]:
    """P(step correct) for each step, the input built only from the preset in prm.json (as TokenPRM does)."""
    p = models.preset
    texts = [
        p.prefix.format(question=q)
        + "".join(p.step_template.format(step=s, n=n) + p.tag + p.separator for n, s in enumerate(steps, start=1))
        for q, steps in zip(questions, solutions, strict=True)
    ]
    tok = models.tokenizer
    tok.padding_side = "right"
    scores: list[list[float]] = []
    for start in range(0, len(texts), batch):
        enc = tok(texts[start : start + batch], return_tensors="pt", padding=True)
        logits = models.prm(**enc).logits
        pair = torch.stack([logits[..., models.good_id], logits[..., models.bad_id]], dim=-1).softmax(-1)[..., 0]
        for row in range(len(enc["input_ids"])):
            at_tags = enc["input_ids"][row] == models.tag_id
            scores.append(pair[row][at_tags].tolist())
    tok.padding_side = "left"
    return scores


@torch.no_grad()
def checker_step_scores(models: Models, questions: Sequence[str], solutions: Sequence[list[str]],
                        batch: int = 64) -> list[list[float]]:
    """exp(least token logprob) of each step under the checker, the input built as LikelihoodPRM builds it."""
    p, tok = models.checker_preset, models.tokenizer
    encoded: list[tuple[list[int], list[tuple[int, int]]]] = []
    for question, steps in zip(questions, solutions, strict=True):
        ids = tok(p.prefix.format(question=question))["input_ids"]
        spans = []
        for n, step in enumerate(steps, start=1):
            if n > 1:
                ids += tok(p.separator, add_special_tokens=False)["input_ids"]
            start = len(ids)
            ids += tok(p.step_template.format(step=step, n=n), add_special_tokens=False)["input_ids"]
            spans.append((start, len(ids)))
        encoded.append((ids, spans))
    scores: list[list[float]] = []
    for first in range(0, len(encoded), batch):
        chunk = encoded[first : first + batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        for row, (tokens, _) in enumerate(chunk):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        logprobs = torch.log_softmax(models.checker(input_ids=ids).logits.float(), dim=-1)
        own = logprobs[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)  # own[:, i - 1] is token i's logprob
        for row, (_, spans) in enumerate(chunk):
            scores.append([float(own[row, a - 1 : b - 1].min().exp()) if b > a else 1.0 for a, b in spans])
    return scores


def aggregate(scores: Sequence[float], how: str) -> float:
    if not scores:
        return 0.0
    if how == "min":
        return min(scores)
    if how == "last":
        return scores[-1]
    product = 1.0
    for s in scores:
        product *= s
    return product


NextSteps = dict[tuple[int, tuple[str, ...]], dict[str, tuple[bool, float]]]
"""Per (problem, prefix of steps): each next step seen, whether it is right, and its PRM score."""


def same_prefix_pairs(candidates: NextSteps) -> tuple[float, int]:
    """(share of pairs ranked right, pairs) over every right and wrong next step that follow the same prefix.

    Step AUROC pools steps of all problems, so a PRM can score well on it by knowing that late steps of hard
    problems tend to be wrong. Best-of-N and tree search instead compare one problem's candidates after a
    shared prefix; this is the figure that decides whether ranking by the PRM can beat a vote (0.5 is chance).
    """
    wins = 0.0
    pairs = 0
    for options in candidates.values():
        right = [score for ok, score in options.values() if ok]
        wrong = [score for ok, score in options.values() if not ok]
        for r in right:
            for w in wrong:
                pairs += 1
                wins += 1.0 if r > w else 0.5 if r == w else 0.0
    return (wins / pairs if pairs else float("nan")), pairs


def draft_match(models: Models, problems: Sequence[SyntheticProblem], greedy: Sequence[str]) -> tuple[int, int]:
    """(matches, steps): the draft's greedy line vs the reasoner's greedy line, given the reasoner's prefix."""
    prompts: list[str] = []
    targets: list[str] = []
    for problem, text in zip(problems, greedy, strict=True):
        lines = text.split("\n")
        for i, line in enumerate(lines):
            prompts.append(mini_prompt(problem.question) + "".join(f"{prev}\n" for prev in lines[:i]))
            targets.append(line)
    proposals = complete(models, models.draft, prompts, max_new_tokens=24, rows=192)
    matches = sum(p[0].split("\n")[0] == t for p, t in zip(proposals, targets, strict=True))
    return matches, len(targets)


def level_range(text: str) -> list[int]:
    """``--levels 5-8`` (or ``3``) as a list of levels, refused by argparse unless it lies within 1..8."""
    try:
        low, _, high = text.partition("-")
        levels = list(range(int(low), int(high or low) + 1))
    except ValueError:
        levels = []
    if not levels or levels[0] < 1 or levels[-1] > 8:
        raise argparse.ArgumentTypeError(f"a level range within 1-8 such as 5-8, got {text!r}")
    return levels


def held_out(family: str, seed: int, n: int, levels: Sequence[int]) -> list[SyntheticProblem]:
    """``n`` problems of ``family``; ``mix`` is the first half of the word problems' draw and the first half of
    the totals questions' draw, so each family's half is the same problems as in a run of that family alone."""
    if family == "chain":
        return generate(seed, n, levels=levels)
    if family == "totals":
        return generate_totals(seed, n, levels=levels)
    return generate(seed, n - n // 2, levels=levels) + generate_totals(seed, n // 2, levels=levels)


def family_of(problem: SyntheticProblem) -> str:
    return "totals" if problem.terms else "words"


def top_answer(answers: Sequence[str | None]) -> str | None:
    """The plain vote's winner (the first-seen of tied answers), None when no sample has an answer."""
    tally = Counter(a for a in answers if a is not None)
    return tally.most_common(1)[0][0] if tally else None


def pct(values: Sequence[bool]) -> str:
    return f"{100 * sum(values) / max(1, len(values)):5.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=at_least_one, default=480, help="held-out problems (levels in equal shares); 160 "
                        "moves by several points with the draw, so the targets are measured on 480")
    parser.add_argument("--levels", type=level_range, default=range(1, 9),
                        help="a level range such as 5-8 (default 1-8)")
    parser.add_argument("--policy", choices=["reasoner", "checker"], default="reasoner",
                        help="the model that answers and is sampled; checker shows a longer-trained policy voting")
    parser.add_argument("--seed", type=int, default=EVAL_SEEDS.start, help="must be one of EVAL_SEEDS")
    parser.add_argument("--family", choices=["chain", "totals", "mix"], default="chain",
                        help="the word problems of ttc.bench.synthetic (the shipped models' family), the totals "
                        "questions of ttc.bench.totals, or half of each (reported per family too)")
    parser.add_argument("--samples", type=at_least_one, default=16)
    parser.add_argument("--sampling-seed", type=torch_seed, default=None, help="reseed torch before sampling: other "
                        "samples of the same problems (without it, the samples follow from --seed)")
    parser.add_argument("--temperature", type=sampling_temperature, default=TEMPERATURE, help="the strategies' default")
    parser.add_argument("--top-p", type=probability, default=TOP_P, help="the strategies' default")
    parser.add_argument("--threads", type=at_least_one, default=2)
    parser.add_argument("--prm", type=prm_folder, default=None,
                        help="a candidate PRM folder instead of the shipped one "
                        "(same tokenizer and prm.json format)")
    parser.add_argument("--checker", type=model_folder, default=None, help="a candidate checker folder instead of the "
                        "shipped one")
    parser.add_argument("--reasoner", type=model_folder, default=None,
                        help="a candidate reasoner folder instead of the "
                        "shipped one (e.g. one trained with --solutions varied)")
    parser.add_argument("--draft", type=model_folder, default=None,
                        help="a candidate draft folder instead of the shipped "
                        "one (e.g. one distilled from the reasoner with --draft-from reasoner)")
    parser.add_argument("--calculator", action="store_true", help="write each equation's result for the policy, "
                        "greedy and sampled alike: the figures of the same policy if it never slipped in arithmetic")
    parser.add_argument("--distinct", action="store_true", help="draw the samples without replacement with ttc's "
                        "local engine (Sampling(distinct=True)): up to --samples different texts per problem")
    parser.add_argument("--dump", type=dump_file, default=None, help="write each problem's greedy solution, "
                        "samples and their PRM and checker step scores here (JSON lines), after the report")
    args = parser.parse_args(argv)
    if args.family == "mix" and args.n < 2:  # half of one question is none: the totals columns would be empty
        parser.error("--family mix splits --n between two families; pass --n 2 or more")
    if args.distinct and args.calculator:  # before the models load and greedy decoding runs
        parser.error("--distinct draws with ttc's engine, which has no calculator; drop one of the two")
    if args.seed not in EVAL_SEEDS:
        parser.error(f"--seed must be a held-out seed in [{EVAL_SEEDS.start}, {EVAL_SEEDS.stop})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = Models(args.prm, args.checker, args.reasoner, args.draft)
    problems = held_out(args.family, args.seed, args.n, args.levels)
    policy = models.reasoner if args.policy == "reasoner" else models.checker
    prompts = [mini_prompt(p.question) for p in problems]
    timings: dict[str, float] = {}

    started = time.time()
    greedy = [c[0] for c in complete(models, policy, prompts, calculator=args.calculator)]
    timings["greedy"] = time.time() - started

    started = time.time()
    decoded: int | None = None
    if args.distinct:
        folder = (args.reasoner or mini_model_path("reasoner")) if args.policy == "reasoner" else (
            args.checker or mini_model_path("checker"))
        sampled, decoded = run_or_exit(parser, lambda: complete_distinct(
            folder, prompts, samples=args.samples, temperature=args.temperature, top_p=args.top_p,
            seed=args.sampling_seed or 0, threads=args.threads))
    else:
        if args.sampling_seed is not None:
            torch.manual_seed(args.sampling_seed)
        sampled = complete(models, policy, prompts, samples=args.samples, temperature=args.temperature,
                           top_p=args.top_p, calculator=args.calculator)
    timings["sampling"] = time.time() - started
    groups, start = [], 0
    for drawn in sampled:  # a problem's samples, as indexes into ``flat``
        groups.append(range(start, start + len(drawn)))
        start += len(drawn)

    started = time.time()
    flat = [(i, plain(s, models.preset)) for i, group in enumerate(sampled) for s in group]
    step_lists = [split_steps(text) for _, text in flat]
    step_scores = prm_step_scores(models, [problems[i].question for i, _ in flat], step_lists)
    timings["prm"] = time.time() - started

    started = time.time()
    checker_scores = checker_step_scores(models, [problems[i].question for i, _ in flat], step_lists)
    timings["checker"] = time.time() - started

    started = time.time()
    matches, draft_steps = draft_match(models, problems, greedy)
    timings["draft"] = time.time() - started

    rows: dict[str, dict[str, list[bool]]] = {}
    auroc_scores: list[float] = []
    auroc_labels: list[bool] = []
    next_steps: NextSteps = {}
    checker_next: NextSteps = {}
    checker_auroc_scores: list[float] = []
    # The same steps once each: a step is its problem and the steps up to it, which fix its label and both scores.
    distinct_steps: dict[tuple[int, tuple[str, ...]], tuple[bool, float, float]] = {}
    greedy_misses: list[tuple[int, int]] = []  # (samples with the right answer, copies of the top wrong chain)
    for i, problem in enumerate(problems):
        group = groups[i]
        answers = [extract_answer(flat[k][1]) for k in group]
        labels_of = {k: label_steps(problem, flat[k][1]) for k in group}
        votes = Counter(a for a in answers if a is not None)
        majority = top_answer(answers)
        # The same vote if different wrong chains never shared an answer: right samples still pool, a wrong one
        # only with copies of its own text. It separates wrong answers that coincide from a policy that is
        # simply confident in one wrong chain.
        unpooled = Counter(a if a == problem.answer else f"{a}\0{flat[k][1]}"
                           for k, a in zip(group, answers, strict=True) if a is not None)
        right_votes = votes.get(problem.answer, 0)
        # As the strategies' check_arithmetic and check_operands: where every sample fails, every sample votes.
        arith, checked = (
            [k for k in group if not checks.failed(problem.question, flat[k][1])] or list(group)
            for checks in (Checks(arithmetic=True), Checks(arithmetic=True, operands=True))
        )
        arith_top, checked_top = (top_answer([answers[k - group.start] for k in keep]) for keep in (arith, checked))
        row = {
            "greedy": check_answer(problem, greedy[i]),
            f"maj{args.samples}": majority == problem.answer,
            f"maj{args.samples}_unpooled": bool(unpooled) and unpooled.most_common(1)[0][0] == problem.answer,
            f"maj{args.samples}_arith": arith_top == problem.answer,
            f"maj{args.samples}_checked": checked_top == problem.answer,
            # Not a score: how often the vote returns greedy decoding's answer, right or wrong. Where a problem
            # has one chain of decisions the vote estimates the greedy answer, so this grows with the samples.
            f"maj{args.samples}=greedy": majority is not None and majority == extract_answer(greedy[i]),
            f"pass@{args.samples}": right_votes > 0,
            # The ceiling of any verifier that judges steps: a sample whose every step is right. Below pass@N
            # on long problems, where wrong chains can still land on the right number.
            f"pass@{args.samples}_steps": any(
                all(labels_of[k]) and len(labels_of[k]) == len(problem.steps) + 1 for k in group
            ),
        }
        if not row["greedy"]:
            top_wrong = max((n for text, n in Counter(flat[k][1] for k in group).items()
                             if extract_answer(text) != problem.answer), default=0)
            greedy_misses.append((right_votes, top_wrong))
        for how in ("min", "last", "prod"):
            best = max(group, key=lambda k: aggregate(step_scores[k], how))
            row[f"bo{args.samples}_prm_{how}"] = check_answer(problem, flat[best][1])
        for how in ("min", "prod"):  # min first: StepwiseOutcome's default
            best = max(group, key=lambda k: aggregate(checker_scores[k], how))
            row[f"bo{args.samples}_checker_{how}"] = check_answer(problem, flat[best][1])
        # best_of_n with the checks: the checker picks among the samples that pass them.
        for name, keep in (("arith", arith), ("checked", checked)):
            best = max(keep, key=lambda k: aggregate(checker_scores[k], "min"))
            row[f"bo{args.samples}_checker_{name}"] = check_answer(problem, flat[best][1])
        weights: dict[str, float] = {}
        for k, answer in zip(group, answers, strict=True):
            if answer is not None:
                weights[answer] = weights.get(answer, 0.0) + aggregate(checker_scores[k], "min")
        row[f"wvote{args.samples}_checker"] = bool(weights) and max(weights, key=weights.__getitem__) == problem.answer
        for key, ok in row.items():
            for column in ("all", f"L{problem.level}", *([family_of(problem)] if args.family == "mix" else [])):
                rows.setdefault(key, {}).setdefault(column, []).append(ok)
        seen: set[str] = set()
        for k in group:  # each distinct sample once, so easy problems' repeated solutions do not dominate
            if flat[k][1] in seen:
                continue
            seen.add(flat[k][1])
            labels = labels_of[k]
            auroc_scores += step_scores[k][: len(labels)]
            steps = step_lists[k]
            for j, (ok, score, judged) in enumerate(zip(labels, step_scores[k], checker_scores[k], strict=False)):
                next_steps.setdefault((i, tuple(steps[:j])), {})[steps[j]] = (ok, score)
                checker_next.setdefault((i, tuple(steps[:j])), {})[steps[j]] = (ok, judged)
                if not ok:
                    break  # past the first wrong step there is no right alternative under the same prefix
            auroc_labels += labels[: len(step_scores[k])]
            # The checker judges a step on its own, so a path's label at step j is "every step up to j is right":
            # its score there is the least step score so far (as the searches aggregate it).
            running = [min(checker_scores[k][: j + 1]) for j in range(len(checker_scores[k]))]
            checker_auroc_scores += running[: len(labels)]
            for j, (ok, score, least) in enumerate(zip(labels, step_scores[k], running, strict=False)):
                distinct_steps.setdefault((i, tuple(steps[: j + 1])), (ok, score, least))

    levels = [*sorted({f"L{p.level}" for p in problems}), *(["words", "totals"] if args.family == "mix" else []), "all"]
    print(f"held-out problems: {len(problems)} (seed {args.seed}), {args.samples} samples at T={args.temperature} "
          f"top_p={args.top_p} from the {args.policy}" + (", drawn without replacement" if args.distinct else "")
          + (", every equation's result written by the calculator" if args.calculator else ""))
    print(f"{'method':<16}" + "".join(f"{lv:>7}" for lv in levels))
    for key, by_level in rows.items():
        print(f"{key:<16}" + "".join(f"{pct(by_level[lv]):>7}" for lv in levels))
    texts = [len(set(flat[k][1] for k in group)) for group in groups]
    sample_tokens = sum(len(models.tokenizer(text, add_special_tokens=False)["input_ids"]) for group in sampled
                        for text in group)
    print(f"samples per problem: {statistics.mean(len(g) for g in groups):.2f} drawn, "
          f"{statistics.mean(texts):.2f} different texts; {sample_tokens} sample tokens"
          + (f", {decoded} decoded (a prefix shared by samples is decoded once)" if decoded is not None else ""))
    if greedy_misses:
        right, wrong = (statistics.median(column) for column in zip(*greedy_misses, strict=True))
        print(f"on the {len(greedy_misses)} problems greedy gets wrong, of {args.samples} samples a median {right:g} "
              f"have the right answer and {wrong:g} are copies of the most common wrong solution")
    prm_auroc = auroc(auroc_scores, auroc_labels)
    print(f"PRM step AUROC {prm_auroc:.3f} on the {len(auroc_labels)} labelled steps of the distinct samples "
          f"({100 * sum(auroc_labels) / max(1, len(auroc_labels)):.1f}% correct; a prefix several samples share "
          "counts once per sample)")
    unique_labels = [ok for ok, _, _ in distinct_steps.values()]
    prm_auroc_unique = auroc([score for _, score, _ in distinct_steps.values()], unique_labels)
    checker_auroc_unique = auroc([least for _, _, least in distinct_steps.values()], unique_labels)
    print(f"the same over the {len(unique_labels)} distinct steps (a problem's prefix counted once): PRM "
          f"{prm_auroc_unique:.3f}, checker {checker_auroc_unique:.3f} "
          f"({100 * sum(unique_labels) / max(1, len(unique_labels)):.1f}% correct)")
    pair_acc, pairs = same_prefix_pairs(next_steps)
    print(f"PRM ranks the right next step above a wrong one after the same prefix: {pair_acc:.3f} of {pairs} pairs")
    checker_auroc = auroc(checker_auroc_scores, auroc_labels)
    checker_pair, _ = same_prefix_pairs(checker_next)
    print(f"checker (likelihood) step AUROC {checker_auroc:.3f}; right next step above a wrong one: "
          f"{checker_pair:.3f} of {pairs} pairs")
    print(f"draft = {args.policy} greedy next step: {matches}/{draft_steps}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    def acc(key: str) -> float:
        return sum(rows[key]["all"]) / len(problems)

    summary = {
        "greedy_acc": acc("greedy"),
        f"bo{args.samples}_prm_acc": acc(f"bo{args.samples}_prm_min"),
        f"bo{args.samples}_prm_last_acc": acc(f"bo{args.samples}_prm_last"),
        f"maj{args.samples}_acc": acc(f"maj{args.samples}"),
        f"maj{args.samples}_unpooled_acc": acc(f"maj{args.samples}_unpooled"),
        f"maj{args.samples}_arith_acc": acc(f"maj{args.samples}_arith"),
        f"maj{args.samples}_checked_acc": acc(f"maj{args.samples}_checked"),
        f"maj{args.samples}_is_greedy": acc(f"maj{args.samples}=greedy"),
        f"pass{args.samples}": acc(f"pass@{args.samples}"),
        f"pass{args.samples}_steps": acc(f"pass@{args.samples}_steps"),
        "prm_auroc": prm_auroc,
        "prm_auroc_distinct_steps": prm_auroc_unique,
        "prm_same_prefix_pair_acc": pair_acc,
        f"bo{args.samples}_checker_acc": acc(f"bo{args.samples}_checker_min"),
        f"bo{args.samples}_checker_prod_acc": acc(f"bo{args.samples}_checker_prod"),
        f"bo{args.samples}_checker_arith_acc": acc(f"bo{args.samples}_checker_arith"),
        f"bo{args.samples}_checker_checked_acc": acc(f"bo{args.samples}_checker_checked"),
        f"wvote{args.samples}_checker_acc": acc(f"wvote{args.samples}_checker"),
        "checker_auroc": checker_auroc,
        "checker_auroc_distinct_steps": checker_auroc_unique,
        "checker_same_prefix_pair_acc": checker_pair,
        "draft_step_match": matches / max(1, draft_steps),
        "texts_per_problem": statistics.mean(texts),
    }
    print(headline(summary))
    if args.dump is not None:
        try:
            write_dump(args.dump, [{
                "question": problem.question, "answer": problem.answer, "level": problem.level,
                "greedy": greedy[i], "samples": [flat[k][1] for k in groups[i]],
                "prm": [step_scores[k] for k in groups[i]], "checker": [checker_scores[k] for k in groups[i]],
            } for i, problem in enumerate(problems)])
        except OSError as exc:
            parser.exit(1, f"{parser.prog}: error: argument --dump: cannot write {str(args.dump)!r}: {exc}\n")


def headline(summary: dict[str, float]) -> str:
    """The last line, ``name=value`` pairs; a figure a run cannot define (an AUROC where every labelled step is
    right, or none is; no same-prefix pair) is left out rather than printed as nan."""
    return " ".join(f"{k}={v:.3f}" for k, v in summary.items() if not math.isnan(v))


def dump_file(text: str) -> Path:
    """A file ``--dump`` can create: its folder must exist and be writable, and the name no folder. Checked while
    parsing, since the dump is written after every arm has run."""
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"must be a file to write in an existing, writable folder, got {text!r}")
    return path


def write_dump(path: Path, records: Sequence[dict[str, object]]) -> None:
    """One JSON line per problem, so another selection rule can be scored on the same samples."""
    with path.open("w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    run_script(main)
