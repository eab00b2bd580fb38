"""Attention plans: how one forward's new KV is stored and which tree blocks each query row attends over.

Two shapes of forward exist. *Extend* runs new tokens for one or more sequences, each over its own cached
prefix: a prompt suffix to prefill, the last tokens of sequences a search holds (to start requests that extend
them, or to embed search-tree nodes), tokens to score. Prefix blocks are read-only segments, one per block and
depth however many rows read it, and each row's fresh KV, kept in a scratch buffer, is its causal segment; the
engine keeps from the scratch what the tree lacks. *Decode* runs one new token for every active branch: each
token's KV is written into its branch's open block, and the segments are the distinct blocks on all branches'
paths, each listing the rows that read it, so a prefix shared by 32 branches is one segment with 32 queries.
Every layer attends the same forest, so a plan checks its layout once, when it is made, and each layer passes
only its own KV (``ttc.kernels.layout_attention``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ttc.engine.kv_tree import KVBlock
from ttc.kernels import forest_layout, layout_attention


class ExtendPlan:
    """Row ``i`` runs its new tokens over the cached positions ``prefixes[i]`` (block, tokens used) covers.

    ``scratch`` is [layers, 2, B, T, H_kv, D]; after the forward, ``scratch[:, :, i, :n]`` holds the KV of row
    ``i``'s first ``n`` tokens. A row with fewer than ``T`` tokens is padded at its end, where causal attention
    keeps every real token from seeing the padding.
    """

    def __init__(self, prefixes: Sequence[Sequence[tuple[KVBlock, int]]], scratch: Tensor) -> None:
        self.scratch = scratch
        groups: dict[tuple[int, int], tuple[KVBlock, int, list[int]]] = {}
        for row, prefix in enumerate(prefixes):
            for block, used in prefix:
                if used > 0:
                    groups.setdefault((block.id, used), (block, used, []))[2].append(row)
        self.prefix = [_kv_views(block, used) for block, used, _ in groups.values()]
        batch, tokens = int(scratch.shape[2]), int(scratch.shape[3])
        self.layout = forest_layout(
            [torch.tensor(rows, dtype=torch.int64) for _, _, rows in groups.values()]
            + [torch.tensor([row], dtype=torch.int64) for row in range(batch)],
            [used for _, used, _ in groups.values()] + [tokens] * batch,
            [False] * len(groups) + [True] * batch,
            batch=batch,
            tokens=tokens,
        )

    def attend(self, layer: int, q: Tensor, keys: Tensor, values: Tensor, scale: float) -> Tensor:
        own = self.scratch[layer]
        own[0].copy_(keys)
        own[1].copy_(values)
        return layout_attention(q, self.layout, [k[layer] for k, _ in self.prefix] + list(own[0].unbind(0)),
                                [v[layer] for _, v in self.prefix] + list(own[1].unbind(0)), scale=scale)


class DecodePlan:
    """Many branches, one new token each; ``leaves[i]`` already lists row ``i``'s token at ``offsets[i]``."""

    def __init__(self, leaves: Sequence[KVBlock], offsets: Sequence[int]) -> None:
        self.leaves = list(leaves)
        self.offsets = list(offsets)
        rows_of: dict[int, tuple[KVBlock, list[int]]] = {}
        for row, leaf in enumerate(self.leaves):
            for block in leaf.path():
                rows_of.setdefault(block.id, (block, []))[1].append(row)
        leaf_ids = {leaf.id for leaf in self.leaves}
        blocks = [(block, rows) for block, rows in rows_of.values() if block.length > 0]
        self.kv = [_kv_views(block, block.length) for block, _ in blocks]
        self.layout = forest_layout(
            [torch.tensor(rows, dtype=torch.int64) for _, rows in blocks],
            [block.length for block, _ in blocks],
            [block.id in leaf_ids for block, _ in blocks],
            batch=len(self.leaves),
            tokens=1,
        )

    def attend(self, layer: int, q: Tensor, keys: Tensor, values: Tensor, scale: float) -> Tensor:
        fresh = torch.stack((keys[:, 0], values[:, 0]), dim=1)  # [B, 2, H_kv, D]
        for row, (leaf, offset) in enumerate(zip(self.leaves, self.offsets, strict=True)):
            assert leaf.storage is not None
            leaf.storage[layer, :, offset].copy_(fresh[row])
        return layout_attention(q, self.layout, [k[layer] for k, _ in self.kv], [v[layer] for _, v in self.kv],
                                scale=scale)


def _kv_views(block: KVBlock, used: int) -> tuple[Tensor, Tensor]:
    """The first ``used`` positions of a block's keys and values across all layers, [layers, used, H_kv, D]."""
    assert block.storage is not None
    return block.storage[:, 0, :used], block.storage[:, 1, :used]


__all__ = ["DecodePlan", "ExtendPlan"]
