"""Cascade (prefix-sharing) attention versus per-branch attention over duplicated prefix KV, at decode time.

B branches share one prefix and each has its own suffix. The baseline is what attention costs without prefix
sharing: every branch attends over its own copy of prefix + suffix (``scaled_dot_product_attention`` on
``[B, H_kv, L, D]`` with grouped-query heads). The cascade path reads the prefix once for all branches.

    python3 benchmarks/cascade_attention.py            # CPU: torch cascade vs SDPA; GPU too when CUDA is present
    python3 benchmarks/cascade_attention.py --quick    # fewer configurations and repeats

On CUDA it also times the Triton kernels and reports the memory-bandwidth bound (every KV byte read once at
``--peak-bw`` bytes/s) and the fraction of it achieved. The last line holds headline figures as name=value.
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP workers that spin-wait between operations steal the cores the next operation
# needs; passive waiting makes timings reflect the work (set before torch loads its OpenMP runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arguments import at_least_one, finite_positive, run_script

from ttc.kernels import Segment, forest_attention

HEADS_Q, HEADS_KV, HEAD_DIM, SUFFIX = 32, 8, 128, 128


@dataclass(frozen=True)
class Case:
    """One shape: B branches over a shared prefix of ``prefix`` tokens, each with a ``SUFFIX``-token suffix."""

    batch: int
    prefix: int

    @property
    def name(self) -> str:
        return f"b{self.batch}_p{self.prefix // 1024}k"

    def duplicated_bytes(self, element_size: int) -> int:
        """Bytes of K and V when every branch holds its own copy of the prefix."""
        return 2 * self.batch * (self.prefix + SUFFIX) * HEADS_KV * HEAD_DIM * element_size

    def unique_bytes(self, element_size: int) -> int:
        """Bytes of K and V when the prefix is stored (and read) once."""
        return 2 * (self.prefix + self.batch * SUFFIX) * HEADS_KV * HEAD_DIM * element_size


def build(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[torch.Tensor, list[Segment]]:
    """Queries and the forest: one prefix segment read by all branches, one suffix segment per branch."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    q = randn(case.batch, 1, HEADS_Q, HEAD_DIM)
    segments = [Segment(randn(case.prefix, HEADS_KV, HEAD_DIM), randn(case.prefix, HEADS_KV, HEAD_DIM),
                        torch.arange(case.batch))]
    for b in range(case.batch):
        segments.append(Segment(randn(SUFFIX, HEADS_KV, HEAD_DIM), randn(SUFFIX, HEADS_KV, HEAD_DIM),
                                torch.tensor([b])))
    return q, segments


def duplicated(q: torch.Tensor, segments: list[Segment]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The baseline's inputs: per-branch [B, H_kv, L, D] KV with the prefix copied into every branch."""
    prefix, suffixes = segments[0], segments[1:]
    length = prefix.length + SUFFIX

    def fill(part: str) -> torch.Tensor:
        shared = getattr(prefix, part)
        out = torch.empty((len(suffixes), HEADS_KV, length, HEAD_DIM), dtype=shared.dtype, device=shared.device)
        out[:, :, : prefix.length] = shared.transpose(0, 1)
        for b, seg in enumerate(suffixes):
            out[b, :, prefix.length :] = getattr(seg, part).transpose(0, 1)
        return out

    return q.transpose(1, 2).contiguous(), fill("k"), fill("v")


def paired_seconds(
    baseline: Callable[[], object], cascade: Callable[[], object], repeats: int, sync: Callable[[], None]
) -> tuple[float, float, float]:
    """Median times of both paths and median per-repeat ratio, timed alternately.

    Alternating the two inside each repeat means a burst of load on a shared machine hits both alike.
    """
    for fn in (baseline, cascade):  # warm-up: allocations, kernel compilation
        fn()
    sync()
    base_times: list[float] = []
    cascade_times: list[float] = []
    for _ in range(repeats):
        for fn, times in ((baseline, base_times), (cascade, cascade_times)):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    ratios = [b / c for b, c in zip(base_times, cascade_times, strict=True)]
    return statistics.median(base_times), statistics.median(cascade_times), statistics.median(ratios)


def run_cpu(cases: list[Case], repeats: int, max_gib: float, headline: dict[str, str]) -> None:
    policy = os.environ.get("OMP_WAIT_POLICY")
    print(f"\nCPU ({torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}), fp32, decode T=1, "
          f"H_q={HEADS_Q} H_kv={HEADS_KV} "
          f"D={HEAD_DIM} suffix={SUFFIX}; speedup = median of per-repeat ratios, timed alternately")
    print(f"{'case':<12}{'dup KV GiB':>11}{'sdpa ms':>10}{'cascade ms':>12}{'speedup':>9}{'max |diff|':>12}")
    for case in cases:
        gib = case.duplicated_bytes(4) / 2**30
        if gib > max_gib:
            print(f"{case.name:<12}{gib:>11.2f}  skipped ({gib:.1f} GiB)")
            continue
        q, segments = build(case, torch.float32, "cpu")
        qd, kd, vd = duplicated(q, segments)

        def baseline(qd: torch.Tensor = qd, kd: torch.Tensor = kd, vd: torch.Tensor = vd) -> torch.Tensor:
            return F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)

        def cascade(q: torch.Tensor = q, segments: list[Segment] = segments) -> torch.Tensor:
            return forest_attention(q, segments, impl="torch")

        t_base, t_casc, speedup = paired_seconds(baseline, cascade, repeats, lambda: None)
        diff = (cascade() - baseline().transpose(1, 2)).abs().max().item()
        headline[f"cpu_speedup_{case.name}"] = f"{speedup:.1f}"
        print(f"{case.name:<12}{gib:>11.2f}{t_base * 1e3:>10.1f}{t_casc * 1e3:>12.1f}{speedup:>8.1f}x{diff:>12.1e}")
        del qd, kd, vd, segments, q


def run_gpu(cases: list[Case], repeats: int, max_gib: float, peak_bw: float, dtype: torch.dtype,
            headline: dict[str, str]) -> None:
    name = torch.cuda.get_device_name()
    size = torch.empty((), dtype=dtype).element_size()
    print(f"\nGPU {name}, {dtype}, decode T=1; bandwidth bound = unique KV bytes / {peak_bw:.3g} B/s")
    print(f"{'case':<12}{'sdpa us':>10}{'triton us':>11}{'speedup':>9}{'bound us':>10}{'of bound':>10}"
          f"{'max |diff|':>12}")
    for case in cases:
        gib = case.duplicated_bytes(size) / 2**30
        if gib > max_gib:
            print(f"{case.name:<12}  skipped ({gib:.1f} GiB)")
            continue
        q, segments = build(case, dtype, "cuda")
        qd, kd, vd = duplicated(q, segments)

        def baseline(qd: torch.Tensor = qd, kd: torch.Tensor = kd, vd: torch.Tensor = vd) -> torch.Tensor:
            return F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)

        def cascade(q: torch.Tensor = q, segments: list[Segment] = segments) -> torch.Tensor:
            return forest_attention(q, segments, impl="triton")

        t_base, t_casc, speedup = paired_seconds(baseline, cascade, repeats, torch.cuda.synchronize)
        diff = (cascade().float() - baseline().transpose(1, 2).float()).abs().max().item()
        bound = case.unique_bytes(size) / peak_bw
        headline[f"gpu_speedup_{case.name}"] = f"{speedup:.1f}"
        headline[f"gpu_bw_frac_{case.name}"] = f"{bound / t_casc:.2f}"
        print(f"{case.name:<12}{t_base * 1e6:>10.1f}{t_casc * 1e6:>11.1f}{speedup:>8.1f}x{bound * 1e6:>10.1f}"
              f"{bound / t_casc:>10.2f}{diff:>12.1e}")
        del q, segments, qd, kd, vd
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B in {8, 64}, prefix in {1k, 4k}, 3 repeats")
    parser.add_argument("--repeats", type=at_least_one, default=None,
                        help="timed repeats per case (default 5; 3 quick; at least 20 on a GPU, whose "
                             "timings are far shorter and noisier)")
    parser.add_argument("--max-gib", type=finite_positive, default=6.0,
                        help="skip cases whose duplicated KV exceeds this many GiB (default 6)")
    parser.add_argument("--gpu-max-gib", type=finite_positive, default=24.0,
                        help="on the GPU, skip cases whose duplicated KV exceeds this many GiB (default 24)")
    parser.add_argument("--peak-bw", type=finite_positive, default=3.35e12,
                        help="GPU peak memory bandwidth in bytes/s (default 3.35e12, H100 SXM)")
    parser.add_argument("--gpu-dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--threads", type=at_least_one, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU table")
    args = parser.parse_args()
    if args.no_cpu and not torch.cuda.is_available():
        parser.error("--no-cpu leaves nothing to measure on a machine without a CUDA GPU")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches, prefixes = ([8, 64], [1024, 4096]) if args.quick else ([8, 64, 256], [1024, 4096, 16384])
    repeats = args.repeats or (3 if args.quick else 5)
    cases = [Case(b, p) for b in batches for p in prefixes]
    headline: dict[str, str] = {}
    if not args.no_cpu:
        run_cpu(cases, repeats, args.max_gib, headline)
    if torch.cuda.is_available():
        run_gpu(cases, max(repeats, 20), args.gpu_max_gib, args.peak_bw, getattr(torch, args.gpu_dtype), headline)
    if not headline:
        parser.exit(1, f"{parser.prog}: every case exceeded --max-gib / --gpu-max-gib: nothing was measured\n")
    print(" ".join(f"{k}={v}" for k, v in headline.items()))


if __name__ == "__main__":
    run_script(main)
