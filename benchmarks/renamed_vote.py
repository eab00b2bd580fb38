#!/usr/bin/env python3
"""Whether the mini reasoner's mistakes belong to a problem or to its wording: a vote over samples of one question
against a vote over the same question told about other people and things.

    python3 benchmarks/renamed_vote.py                     # the model card's 480 held-out problems
    python3 benchmarks/renamed_vote.py --seed 1500000 --n 240 --reasoner DIR

A vote of 16 samples of the mini reasoner lands on its greedy answer, right or wrong (docs/mini_models.md): the
samples repeat greedy's misreadings. A misreading can be a property of the problem (a sentence the model does not
understand) or of the exact text it reads (which name stands before which number). :func:`renamed` keeps every
number, sentence and step of a problem and swaps its names and objects, so a reader that understands the problem
writes the same solution for every renaming. The arms, on the same problems: greedy; the plain vote of 16 samples
(the same draw as ``benchmarks/mini_models.py``'s ``maj16`` for the same seed); the vote of the greedy answers to
16 renamings; the vote of one sample of each renaming. The last line is ``name=value`` pairs for scripts.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: do not spin while waiting

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import at_least_one, model_folder, probability, run_script, sampling_temperature
from mini_models import Models, complete, held_out, level_range, top_answer

from ttc.bench.report import format_table
from ttc.bench.synthetic import EVAL_SEEDS, SyntheticProblem, extract_answer, renamed
from ttc.models import mini_prompt
from ttc.strategies.base import TEMPERATURE, TOP_P


def per_problem(texts: Sequence[str], k: int) -> list[list[str]]:
    """A flat list of ``k`` texts per problem, grouped back by problem."""
    return [list(texts[i : i + k]) for i in range(0, len(texts), k)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=at_least_one, default=480, help="held-out problems (levels in equal shares)")
    parser.add_argument("--levels", type=level_range, default=range(1, 9), help="a level range such as 5-8")
    parser.add_argument("--seed", type=int, default=EVAL_SEEDS.start, help="must be one of EVAL_SEEDS")
    parser.add_argument("--samples", type=at_least_one, default=16, help="samples, and renamings, per problem")
    parser.add_argument("--temperature", type=sampling_temperature, default=TEMPERATURE,
                        help="the strategies' default")
    parser.add_argument("--top-p", type=probability, default=TOP_P, help="the strategies' default")
    parser.add_argument("--threads", type=at_least_one, default=2)
    parser.add_argument("--reasoner", type=model_folder, default=None, help="a candidate reasoner folder")
    args = parser.parse_args(argv)
    if args.seed not in EVAL_SEEDS:
        parser.error(f"--seed must be a held-out seed in [{EVAL_SEEDS.start}, {EVAL_SEEDS.stop})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = Models(reasoner_dir=args.reasoner)
    problems = held_out("chain", args.seed, args.n, args.levels)
    k = args.samples
    sampling = {"temperature": args.temperature, "top_p": args.top_p}

    prompts = [mini_prompt(p.question) for p in problems]
    greedy = [c[0] for c in complete(models, models.reasoner, prompts)]
    sampled = complete(models, models.reasoner, prompts, samples=k, **sampling)  # mini_models.py's draw
    rng = random.Random(args.seed)
    renamings: list[SyntheticProblem] = [renamed(p, rng) for p in problems for _ in range(k)]
    renamed_prompts = [mini_prompt(r.question) for r in renamings]
    renamed_greedy = per_problem([c[0] for c in complete(models, models.reasoner, renamed_prompts)], k)
    renamed_sampled = per_problem([c[0] for c in complete(models, models.reasoner, renamed_prompts, **sampling)], k)

    def right(problem: SyntheticProblem, answer: str | None) -> bool:
        return answer == problem.answer

    greedy_answers = [extract_answer(g) for g in greedy]
    greedy_right = [right(p, a) for p, a in zip(problems, greedy_answers, strict=True)]
    missed = [i for i, ok in enumerate(greedy_right) if not ok]
    arms = {
        f"vote of {k} samples": sampled,
        f"vote of greedy on {k} renamings": renamed_greedy,
        f"vote of one sample of each of {k} renamings": renamed_sampled,
    }
    rows: list[list[object]] = [["greedy", 100 * statistics.mean(greedy_right), 100 * statistics.mean(greedy_right),
                                 "", ""]]
    figures: dict[str, float] = {"greedy": 100 * statistics.mean(greedy_right)}
    for (label, texts), key in zip(arms.items(), ("vote", "renamed_greedy_vote", "renamed_sample_vote"), strict=True):
        answers = [[extract_answer(t) for t in group] for group in texts]
        vote = [right(p, top_answer(a)) for p, a in zip(problems, answers, strict=True)]
        each = [statistics.mean(right(p, x) for x in a) for p, a in zip(problems, answers, strict=True)]
        same = [statistics.mean(x == greedy_answers[i] for x in answers[i]) for i in range(len(problems))]
        right_where_missed = (statistics.median(sum(right(problems[i], x) for x in answers[i]) for i in missed)
                              if missed else math.nan)  # greedy solved every problem drawn
        figures[key] = 100 * statistics.mean(vote)
        rows.append([label, figures[key], 100 * statistics.mean(each), 100 * statistics.mean(same),
                     right_where_missed])
    print(f"held-out problems: {len(problems)} (seed {args.seed}), {k} samples and renamings at "
          f"T={args.temperature} top_p={args.top_p}; greedy wrong on {len(missed)}")
    print(format_table(["arm", "accuracy", "each answer right", "answers = greedy's", f"right of {k} where greedy "
                        "is wrong (median)"], rows))
    gain = figures["renamed_greedy_vote"] - figures["greedy"]
    print(f"greedy={figures['greedy']:.1f} vote{k}={figures['vote']:.1f} renamed_greedy_vote{k}="
          f"{figures['renamed_greedy_vote']:.1f} renamed_sample_vote{k}={figures['renamed_sample_vote']:.1f} "
          f"renamed_gain={gain:.1f}")


if __name__ == "__main__":
    run_script(main)
