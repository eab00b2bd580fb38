"""The entry points to cascade attention: validate the forest once and pick an implementation.

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
from ttc.kernels.segments import TRITON_MAX_HEAD_DIM, Forest, ForestLayout, Segment, bind_forest, check_forest

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
    _check_impl(impl)
    return _attend(q, check_forest(q, segments, scale), impl)


def layout_attention(
    q: torch.Tensor,
    layout: ForestLayout,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """:func:`forest_attention` over a checked layout (``forest_layout``) and each segment's ``[L, H_kv, D]`` KV.

    The layers of one forward attend the same forest over different KV: checking the structure, and deriving
    each implementation's tables from it, once per forward instead of once per layer is what this entry saves.
    ``keys[i]`` and ``values[i]`` belong to the layout's segment ``i``.
    """
    _check_impl(impl)
    return _attend(q, bind_forest(q, layout, keys, values, scale), impl)[0]


def _check_impl(impl: Impl) -> None:
    if impl not in _IMPLS:
        raise ConfigError(f"impl must be one of {', '.join(_IMPLS)}; got {impl!r}")


def _attend(q: torch.Tensor, forest: Forest, impl: Impl) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton(q, impl):
        return _run_triton(q, forest)
    return forest_attention_torch(q, forest)


def _use_triton(q: torch.Tensor, impl: Impl) -> bool:
    if impl == "torch":
        return False
    if impl == "triton":
        return True
    # The kernel's tiles hold a head of at most TRITON_MAX_HEAD_DIM; a wider one is the torch path's, not an error.
    # Kernels defined under TRITON_INTERPRET=1 run on the host only: CUDA tensors then take the torch path too.
    return (q.device.type == "cuda" and q.shape[-1] <= TRITON_MAX_HEAD_DIM and _triton_installed()
            and not _interpreting())


@functools.cache  # fixed for the process: the kernels are defined once, interpreted or not
def _interpreting() -> bool:
    from ttc.kernels.triton_forest import interpreting

    return interpreting()


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
