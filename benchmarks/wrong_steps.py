#!/usr/bin/env python3
"""Where a reasoner's answers to word problems go wrong, and why its vote gains or does not.

    python3 benchmarks/wrong_steps.py                                  # the shipped reasoner, 240 dev problems
    python3 benchmarks/wrong_steps.py --reasoner DIR --levels 5-8      # a candidate, on its hard levels

Majority voting beats greedy decoding where the right answer gathers samples from several chains and wrong
answers scatter. This names each wrong sample's first wrong step (by :func:`ttc.bench.synthetic.label_steps`,
which accepts any order and grouping of a run of gains and losses): an event done twice, an event done before
the product or share it must follow, an operand that neither the question nor an earlier line offers, a bag's
count or size used for its product, the wrong operator, a miscomputed line, or the answer line. On the problems
greedy gets wrong it prints how many samples are right, how many distinct wrong answers there are, and how
often the vote loses by at most one sample; and greedy against the vote by how many orders a problem's runs
allow (:func:`ttc.bench.groupings.runs_of`). The last line is ``name=value`` pairs for scripts.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: do not spin while waiting


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import run_script
from mini_models import level_range
from wrong_totals import greedy_and_samples, parse_sampling_args, sampling_parser, share

from ttc.bench.groupings import runs_of
from ttc.bench.synthetic import (
    SyntheticProblem,
    evaluate,
    extract_answer,
    generate,
    label_steps,
    parse_step,
    split_steps,
)
from ttc.strategies.base import TOP_P


def first_wrong_step(problem: SyntheticProblem, text: str) -> str:
    lines = split_steps(text)
    labels = label_steps(problem, text)
    if all(labels):
        return "none"
    k = labels.index(False)
    if lines[k].startswith("The answer is"):
        return "the answer line"
    parsed = parse_step(lines[k])
    if parsed is None:
        return "a malformed line"
    a, op, b, claimed = parsed
    if evaluate(a, op, b) != claimed:
        return "miscomputed"
    events = Counter((e.op, e.amount.value) for e in problem.events)
    done = Counter((o, y) for q in map(parse_step, lines[:k]) if q for o, y in ((q[1], q[2]), (q[1], q[0])))
    amounts = [(op, y) for y in (b, a) if (op, y) in events]
    if any(done[amount] >= events[amount] for amount in amounts):
        return "an event done twice"
    if amounts:
        return "an event before the product or share it must follow"
    offered = {int(w) for w in problem.question.replace(".", " ").split() if w.isdigit()}
    offered |= {int(line.rsplit(" ", 1)[1]) for line in lines[:k] if parse_step(line)}
    if not {a, b} <= offered:
        return "an operand neither the question nor an earlier line offers"
    parts = {x for e in problem.events if e.amount.per_bag is not None for x in (e.amount.count, e.amount.per_bag)}
    if {a, b} & parts and op != "*":
        return "a bag's count or size for its product"
    if any(value in (a, b) for _, value in events):
        return "the wrong operator"
    return "other"


def orders(problem: SyntheticProblem) -> str:
    n = math.prod(math.factorial(len(run)) for run in runs_of(problem.events))
    return "1" if n == 1 else "2" if n == 2 else "3-6" if n <= 6 else "7+"


def main() -> None:
    parser = sampling_parser(__doc__ or "", top_p=TOP_P)
    parser.add_argument("--levels", type=level_range, default=range(1, 9),
                        help="a level range such as 5-8 (default 1-8)")
    args = parse_sampling_args(parser)
    problems = generate(args.seed, args.n, levels=args.levels)
    greedy, sampled = greedy_and_samples(args, problems)

    steps: Counter[str] = Counter()
    right: list[int] = []
    distinct_wrong: list[int] = []
    close_losses = 0
    by_orders: dict[str, list[tuple[bool, bool]]] = {}
    for problem, greedy_text, group in zip(problems, greedy, sampled, strict=True):
        answers = [extract_answer(text) for text in group]
        for text, answer in zip(group, answers, strict=True):
            if answer != problem.answer:
                steps[first_wrong_step(problem, text)] += 1
        votes = Counter(a for a in answers if a is not None)
        vote_right = bool(votes) and votes.most_common(1)[0][0] == problem.answer
        greedy_right = extract_answer(greedy_text) == problem.answer
        by_orders.setdefault(orders(problem), []).append((greedy_right, vote_right))
        if greedy_right:
            continue
        n_right = votes.get(problem.answer, 0)
        wrong = [n for answer, n in votes.items() if answer != problem.answer]
        right.append(n_right)
        distinct_wrong.append(len(wrong))
        close_losses += n_right > 0 and not vote_right and max(wrong, default=0) - n_right <= 1

    wrong_total = steps.total()
    print(f"{wrong_total} wrong samples of {args.samples * len(problems)}; their first wrong step:")
    print("\n".join(share(steps, wrong_total)))
    print(f"{len(right)} problems greedy gets wrong: median {statistics.median(right or [0])} right samples and "
          f"{statistics.median(distinct_wrong or [0])} distinct wrong answers; the vote loses {close_losses} of them "
          f"by at most one sample")
    print("orders of the runs   problems  greedy   vote")
    for key in ("1", "2", "3-6", "7+"):
        rows = by_orders.get(key, [])
        if rows:
            print(f"  {key:18s} {len(rows):9d} {100 * sum(g for g, _ in rows) / len(rows):6.1f} "
                  f"{100 * sum(v for _, v in rows) / len(rows):6.1f}")
    twice = steps["an event done twice"] + steps["an event before the product or share it must follow"]
    # A share of no wrong samples is undefined: left out, not printed as 0.
    bookkeeping = f" bookkeeping={twice / wrong_total:.3f}" if wrong_total else ""
    print(f"wrong={wrong_total}{bookkeeping} close_losses={close_losses} greedy_wrong={len(right)}")


if __name__ == "__main__":
    run_script(main)
