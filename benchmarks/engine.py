"""Best-of-N on the local engine: prefix-shared KV tree versus private per-branch copies.

One long prompt, N branches sampled to a fixed length, on the same engine with ``share_prefix`` on and off.
Sharing should cut peak KV to about (P + N*G) / (N*(P + G)) of the unshared figure (P prompt tokens, G generated
per branch) and raise decode throughput, because attention reads the shared prompt once per step instead of N
times. Each mode runs on a fresh backend per repeat (so peaks are per run); the table shows medians.

    python3 benchmarks/engine.py                      # random-init Llama, hidden 256, 4 layers
    python3 benchmarks/engine.py --model PATH         # any Llama/Qwen2 folder
    python3 benchmarks/engine.py --prompt-tokens 512 --branches 16 --new-tokens 64 --repeats 5

The last line is ``name=value`` pairs for scripts: kv_ratio (shared/unshared peak KV bytes) and speedup
(shared/unshared tokens per second).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from arguments import at_least_one, model_folder, run_or_exit, run_script  # noqa: E402

from ttc.backends.local import LocalBackend  # noqa: E402
from ttc.engine.config import load_config  # noqa: E402
from ttc.types import Sampling  # noqa: E402

SYNTHETIC_CONTEXT = 4096  # positions of the random-init model built without --model


@dataclass(frozen=True)
class Run:
    seconds: float
    generated: int
    peak_kv_tokens: int
    peak_kv_bytes: int
    fewest: int  # new tokens of the branch that stopped first (at an end-of-text token)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.seconds


def _prompt(length: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "sum", "of", "the", "digits", "is", "=", "+", "7", "42", "\n"]
    text = ""
    while len(text) < 4 * length:
        text += rng.choice(words) + " "
    return text


async def _prompt_ids(path: Path, length: int) -> list[int]:
    async with LocalBackend.from_pretrained(path) as backend:
        ids = await backend.tokenize(_prompt(length, seed=0))
    if len(ids) < length:
        raise SystemExit(f"could not build a {length}-token prompt (got {len(ids)} tokens)")
    return ids[:length]


async def _run_once(path: Path, prompt: list[int], args: argparse.Namespace, share: bool, seed: int) -> Run:
    async with LocalBackend.from_pretrained(
        path, share_prefix=share, max_batch=args.branches, threads=args.threads
    ) as backend:
        sampling = Sampling(max_tokens=args.new_tokens, temperature=1.0, seed=seed)
        start = time.perf_counter()
        outs = await backend.complete(prompt, args.branches, sampling)
        seconds = time.perf_counter() - start
        stats = backend.stats()
    return Run(
        seconds=seconds,
        generated=sum(len(o.token_ids) for o in outs),
        peak_kv_tokens=stats.peak_kv_tokens,
        peak_kv_bytes=stats.peak_kv_tokens * stats.kv_bytes_per_token,
        fewest=min(len(o.token_ids) for o in outs),
    )


def _median_run(runs: list[Run]) -> Run:
    return Run(
        seconds=statistics.median(r.seconds for r in runs),
        generated=int(statistics.median(r.generated for r in runs)),
        peak_kv_tokens=int(statistics.median(r.peak_kv_tokens for r in runs)),
        peak_kv_bytes=int(statistics.median(r.peak_kv_bytes for r in runs)),
        fewest=min(r.fewest for r in runs),
    )


async def _measure(path: Path, args: argparse.Namespace) -> dict[str, Run]:
    prompt = await _prompt_ids(path, args.prompt_tokens)
    results: dict[str, list[Run]] = {"shared": [], "unshared": []}
    # Warm-up (allocator, kernels) on a short run of each mode, not timed.
    for share in (True, False):
        await _run_once(path, prompt[:64], argparse.Namespace(**{**vars(args), "new_tokens": 4}), share, seed=0)
    for repeat in range(args.repeats):
        for label, share in (("shared", True), ("unshared", False)):
            results[label].append(await _run_once(path, prompt, args, share, seed=repeat + 1))
    return {label: _median_run(runs) for label, runs in results.items()}


def _model_path(args: argparse.Namespace, scratch: Path) -> Path:
    if args.model:
        return Path(args.model)
    from ttc.engine.synthetic import build_checkpoint

    return build_checkpoint(
        scratch / "llama-256x4",
        family="llama",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=688,
        max_positions=SYNTHETIC_CONTEXT,
        eos_token_id=None,
        seed=0,
    )


def _table(results: dict[str, Run], args: argparse.Namespace) -> str:
    fewest = min(run.fewest for run in results.values())
    # A branch that ended at an end-of-text token generated fewer tokens than asked: the sizes in the heading and
    # the ideal ratio would describe a run that did not happen.
    short = f" asked, a branch stopped after {fewest}" if fewest < args.new_tokens else ""
    lines = [
        f"best-of-{args.branches}: {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens per branch{short}, "
        f"median of {args.repeats}",
        f"{'mode':<10} {'peak KV tokens':>15} {'peak KV MiB':>12} {'wall s':>8} {'tokens/s':>10}",
    ]
    for label, run in results.items():
        lines.append(
            f"{label:<10} {run.peak_kv_tokens:>15,} {run.peak_kv_bytes / 2**20:>12.2f} {run.seconds:>8.2f} "
            f"{run.tokens_per_s:>10.1f}"
        )
    p, n, g = args.prompt_tokens, args.branches, args.new_tokens
    bound = (p + n * (g - 1)) / (n * (p + g - 1))
    if short:
        lines.append("ideal kv_ratio: none (branches of different lengths)")
    else:
        lines.append(f"ideal kv_ratio for these sizes: {bound:.4f} (the last sampled token of a branch is never fed)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=model_folder, help="Llama/Qwen2 folder (default: a random-init Llama, hidden "
                        "256, 4 layers); its context must hold --prompt-tokens plus --new-tokens (the mini models': "
                        "512)")
    parser.add_argument("--prompt-tokens", type=at_least_one, default=1024)
    parser.add_argument("--branches", type=at_least_one, default=32)
    parser.add_argument("--new-tokens", type=at_least_one, default=128)
    parser.add_argument("--repeats", type=at_least_one, default=3)
    parser.add_argument("--threads", type=at_least_one, default=None, help="engine CPU threads (default: torch's)")
    args = parser.parse_args()
    # The positions the engine reads the model to hold (its own default where config.json states none).
    context = run_or_exit(parser, lambda: load_config(args.model).max_positions) if args.model else SYNTHETIC_CONTEXT
    if args.prompt_tokens + args.new_tokens > context:
        # The engine stops a branch at the context's end: the table would report tokens never generated.
        parser.error(f"--prompt-tokens {args.prompt_tokens} plus --new-tokens {args.new_tokens} exceed the model's "
                     f"context of {context} positions; lower one of them")
    with tempfile.TemporaryDirectory() as scratch:
        path = _model_path(args, Path(scratch))
        results = run_or_exit(parser, lambda: asyncio.run(_measure(path, args)))
    shared, unshared = results["shared"], results["unshared"]
    print(_table(results, args))
    kv_ratio = shared.peak_kv_bytes / unshared.peak_kv_bytes
    speedup = shared.tokens_per_s / unshared.tokens_per_s
    print(
        f"kv_ratio={kv_ratio:.4f} speedup={speedup:.2f} shared_tokens_per_s={shared.tokens_per_s:.1f} "
        f"unshared_tokens_per_s={unshared.tokens_per_s:.1f} shared_peak_kv_bytes={shared.peak_kv_bytes} "
        f"unshared_peak_kv_bytes={unshared.peak_kv_bytes}"
    )


if __name__ == "__main__":
    run_script(main)
