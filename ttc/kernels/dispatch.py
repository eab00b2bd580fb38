"""The one entry point to cascade attention: validates the forest once and picks an implementation.

``impl="auto"`` runs the torch path on CPU and the Triton kernels on CUDA (falling back to torch when Triton is
not installed), so callers such as the local engine never branch on the device themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch

from ttc.errors import ConfigError
from ttc.kernels.reference import forest_attention_torch
from ttc.kernels.segments import Forest, Segment, check_forest

Impl = Literal["auto", "torch", "triton"]
_IMPLS = ("auto", "torch", "triton")


def forest_attention(
    q: torch.Tensor,
    segments: Sequence[Segment],
    *,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Softmax attention of each branch (row of ``q``, ``[B, T, H_q, D]``) over its segments' KV, in order.

    Every segment is attended once for all the branches that read it, and the partial results are merged
    through their log-sum-exp, so a prefix shared by many branches is read once rather than once per branch.
    """
    return forest_attention_with_lse(q, segments, scale=scale, impl=impl)[0]


def forest_attention_with_lse(
    q: torch.Tensor,
    segments: Sequence[Segment],
    *,
    scale: float | None = None,
    impl: Impl = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`forest_attention`, also returning the fp32 log-sum-exp ``[B, T, H_q]`` of the scaled scores.

    The lse lets a caller merge this result with attention over further keys (``merge_state``).
    """
    if impl not in _IMPLS:
        raise ConfigError(f"impl must be one of {', '.join(_IMPLS)}; got {impl!r}")
    forest = check_forest(q, segments, scale)
    if _use_triton(q, impl):
        return _run_triton(q, forest)
    return forest_attention_torch(q, forest)


def _use_triton(q: torch.Tensor, impl: Impl) -> bool:
    if impl == "torch":
        return False
    if impl == "triton":
        return True
    return q.device.type == "cuda" and _triton_installed()


@functools.cache
def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _run_triton(q: torch.Tensor, forest: Forest) -> tuple[torch.Tensor, torch.Tensor]:
    if not _triton_installed():
        raise ConfigError("impl='triton' needs the triton package: pip install 'ttc-engine[triton]'")
    from ttc.kernels.triton_forest import forest_attention_triton

    return forest_attention_triton(q, forest)
