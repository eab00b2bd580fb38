"""Attention plans: how one forward's new KV is stored and which tree blocks each query row attends over.

Three shapes of forward exist. *Extend* runs one sequence's new tokens (a prompt suffix, or tokens to score) over
a cached prefix: the prefix blocks are read-only segments and the fresh KV, kept in a scratch buffer, is the
causal segment. *Decode* runs one new token for every active branch: each token's KV is written into its
branch's open block, and the segments are the distinct blocks on all branches' paths, each listing the rows
that read it, so a prefix shared by 32 branches is one segment with 32 queries. *Last token* runs the final
token of many sequences whose earlier tokens are cached, one row each (requests that extend what a search holds,
and search-tree nodes to embed): prefix blocks are shared segments as in decode, and each row's own KV goes to a
scratch buffer, from which the engine keeps it as a block where the tree lacks that token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ttc.engine.kv_tree import KVBlock
from ttc.kernels import Segment


class ExtendPlan:
    """One sequence: ``prefix`` (block, tokens used) pairs, then the forward's own tokens in ``scratch``.

    ``scratch`` is [layers, 2, T, H_kv, D]; after the forward it holds the new tokens' KV, ready to become
    (part of) a tree block.
    """

    def __init__(self, prefix: Sequence[tuple[KVBlock, int]], scratch: Tensor) -> None:
        self.prefix = [(block, used) for block, used in prefix if used > 0]
        self.scratch = scratch
        self._row = torch.zeros(1, dtype=torch.int64)

    def segments_for(self, layer: int, keys: Tensor, values: Tensor) -> list[Segment]:
        own = self.scratch[layer]
        own[0].copy_(keys[0])
        own[1].copy_(values[0])
        segments = [
            Segment(block.keys(layer, used), block.values(layer, used), self._row) for block, used in self.prefix
        ]
        segments.append(Segment(own[0], own[1], self._row, causal=True))
        return segments


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
        self.groups = [
            (block, torch.tensor(rows, dtype=torch.int64), block.id in leaf_ids)
            for block, rows in rows_of.values()
            if block.length > 0
        ]

    def segments_for(self, layer: int, keys: Tensor, values: Tensor) -> list[Segment]:
        fresh = torch.stack((keys[:, 0], values[:, 0]), dim=1)  # [B, 2, H_kv, D]
        for row, (leaf, offset) in enumerate(zip(self.leaves, self.offsets, strict=True)):
            assert leaf.storage is not None
            leaf.storage[layer, :, offset].copy_(fresh[row])
        return [
            Segment(block.keys(layer), block.values(layer), rows, causal=is_leaf)
            for block, rows, is_leaf in self.groups
        ]


class LastTokenPlan:
    """Row ``i`` is the last token of a sequence whose first tokens ``prefixes[i]`` (block, tokens used) covers.

    ``scratch`` is [layers, 2, B, H_kv, D]; after the forward, ``scratch[:, :, i]`` holds row ``i``'s KV. A
    block read to different depths by different rows is one segment per depth.
    """

    def __init__(self, prefixes: Sequence[Sequence[tuple[KVBlock, int]]], scratch: Tensor) -> None:
        self.scratch = scratch
        groups: dict[tuple[int, int], tuple[KVBlock, int, list[int]]] = {}
        for row, prefix in enumerate(prefixes):
            for block, used in prefix:
                if used > 0:
                    groups.setdefault((block.id, used), (block, used, []))[2].append(row)
        self.groups = [(block, used, torch.tensor(rows, dtype=torch.int64)) for block, used, rows in groups.values()]
        self.own = [torch.tensor([row], dtype=torch.int64) for row in range(len(prefixes))]

    def segments_for(self, layer: int, keys: Tensor, values: Tensor) -> list[Segment]:
        own = self.scratch[layer]
        own[0].copy_(keys[:, 0])
        own[1].copy_(values[:, 0])
        segments = [Segment(block.keys(layer, used), block.values(layer, used), rows)
                    for block, used, rows in self.groups]
        segments += [Segment(own[0, row : row + 1], own[1, row : row + 1], rows, causal=True)
                     for row, rows in enumerate(self.own)]
        return segments


__all__ = ["DecodePlan", "ExtendPlan", "LastTokenPlan"]
