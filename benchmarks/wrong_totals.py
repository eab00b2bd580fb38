#!/usr/bin/env python3
"""Where a reasoner's answers to totals questions go wrong, and which wrong answers collide across samples.

    python3 benchmarks/wrong_totals.py --reasoner DIR                 # 240 totals questions of the dev seed
    python3 benchmarks/wrong_totals.py --reasoner DIR --temperature 1.0

Majority voting needs wrong samples to scatter. On totals questions (:mod:`ttc.bench.totals`) they need not: this
names each wrong sample's first wrong step (a miscomputed line, or right arithmetic on an operand that neither the
question nor an earlier step offers) and its answer's distance from the right total (a term left out or added
twice, a bag's count or size used instead of its product, within 9, a multiple of ten), and, on the questions
greedy decoding gets wrong, which kind of wrong answer is the most common one. The last line is ``name=value``
pairs for scripts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: do not spin while waiting

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import at_least_one, model_folder, probability, run_script, sampling_temperature
from mini_models import Models, complete

from ttc.bench.synthetic import EVAL_SEEDS, SyntheticProblem, evaluate, extract_answer, parse_step, split_steps
from ttc.bench.totals import generate_totals, label_total_steps
from ttc.models import mini_prompt


def answer_kind(problem: SyntheticProblem, wrong: str | None) -> str:
    """How a wrong total relates to the right one, the first matching kind in the order below."""
    if wrong is None:
        return "no answer"
    d = int(wrong) - int(problem.answer)
    if -d in (t.value for t in problem.terms):
        return "a term left out"
    if d in (t.value for t in problem.terms):
        return "a term added twice"
    for t in problem.terms:
        if t.per_bag is not None and d in (t.count - t.value, t.per_bag - t.value, t.count + t.per_bag - t.value):
            return "a bag not multiplied"
    if abs(d) < 10:
        return "within 9"
    if d % 10 == 0:
        return "a multiple of ten off"
    return "other"


def first_wrong_step(problem: SyntheticProblem, text: str) -> str:
    for line, ok in zip(split_steps(text), label_total_steps(problem, text), strict=True):
        if ok:
            continue
        if line.startswith("The answer is"):
            return "the answer line"
        parsed = parse_step(line)
        if parsed is None:
            return "a malformed line"
        a, op, b, claimed = parsed
        if evaluate(a, op, b) != claimed:
            return "miscomputed"
        return f"right arithmetic, operand not offered ({op})"
    return "none (a right chain, wrong answer line)"


def share(counter: Counter[str], total: int) -> list[str]:
    return [f"  {kind:45s} {n:5d} {100 * n / max(1, total):5.1f}%" for kind, n in counter.most_common()]


def sampling_parser(description: str, top_p: float) -> argparse.ArgumentParser:
    """The options the wrong-answer scripts share: the policy, held-out problems, and how to sample them."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reasoner", type=model_folder, default=None,
                        help="the policy folder (default: the shipped one)")
    parser.add_argument("--n", type=at_least_one, default=240)
    parser.add_argument("--seed", type=int, default=1_500_000, help="must be one of EVAL_SEEDS")
    parser.add_argument("--samples", type=at_least_one, default=16)
    parser.add_argument("--temperature", type=sampling_temperature, default=0.8)
    parser.add_argument("--top-p", type=probability, default=top_p)
    parser.add_argument("--threads", type=at_least_one, default=2)
    return parser


def parse_sampling_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.seed not in EVAL_SEEDS:
        parser.error(f"--seed must be a held-out seed in [{EVAL_SEEDS.start}, {EVAL_SEEDS.stop})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


def greedy_and_samples(args: argparse.Namespace, problems: Sequence[SyntheticProblem]
                       ) -> tuple[list[str], list[list[str]]]:
    """The policy's greedy solution of each problem and ``args.samples`` sampled ones."""
    models = Models(reasoner_dir=args.reasoner)
    prompts = [mini_prompt(p.question) for p in problems]
    greedy = [c[0] for c in complete(models, models.reasoner, prompts)]
    sampled = complete(models, models.reasoner, prompts, samples=args.samples, temperature=args.temperature,
                       top_p=args.top_p)
    return greedy, sampled


def main() -> None:
    args = parse_sampling_args(sampling_parser(__doc__ or "", top_p=1.0))
    problems = generate_totals(args.seed, args.n)
    greedy, sampled = greedy_and_samples(args, problems)

    kinds: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    top_kinds: Counter[str] = Counter()
    right: list[int] = []
    top_copies: list[int] = []
    for problem, greedy_text, group in zip(problems, greedy, sampled, strict=True):
        answers = [extract_answer(text) for text in group]
        for text, answer in zip(group, answers, strict=True):
            if answer != problem.answer:
                kinds[answer_kind(problem, answer)] += 1
                steps[first_wrong_step(problem, text)] += 1
        if extract_answer(greedy_text) == problem.answer:
            continue
        right.append(answers.count(problem.answer))
        wrong = Counter(a for a in answers if a is not None and a != problem.answer)
        if wrong:
            top, copies = wrong.most_common(1)[0]
            top_kinds[answer_kind(problem, top)] += 1
            top_copies.append(copies)

    wrong_total = kinds.total()
    print(f"{wrong_total} wrong samples of {args.samples * args.n}; their first wrong step:")
    print("\n".join(share(steps, wrong_total)))
    print("their answer against the right total:")
    print("\n".join(share(kinds, wrong_total)))
    print(f"{len(right)} questions greedy gets wrong: median {statistics.median(right or [0])} right samples, the most "
          f"common wrong answer {statistics.median(top_copies or [0])} times; that answer is")
    print("\n".join(share(top_kinds, top_kinds.total())))
    offered = sum(n for kind, n in steps.items() if kind.startswith("right arithmetic"))
    # A share of nothing is undefined: left out, not printed as 0.
    figures = [f"wrong={wrong_total}"]
    if wrong_total:
        figures += [f"operand_not_offered={offered / wrong_total:.3f}",
                    f"within9={kinds['within 9'] / wrong_total:.3f}"]
    if top_kinds.total():
        figures.append(f"top_within9={top_kinds['within 9'] / top_kinds.total():.3f}")
    print(" ".join(figures))


if __name__ == "__main__":
    run_script(main)
