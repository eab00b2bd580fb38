"""Attention plans: how one forward's new KV is stored and which tree blocks each query row attends over.

Two shapes of forward exist. *Extend* runs new tokens for one or more sequences, each over its own cached
prefix: a prompt suffix to prefill, the last tokens of sequences a search holds (to start requests that extend
them, or to embed search-tree nodes), tokens to score. Prefix blocks are read-only segments, one per block and
depth however many rows read it, and each row's fresh KV, kept in a scratch buffer, is its causal segment; the
engine keeps from the scratch what the tree lacks. *Decode* runs one new token for every active branch: each
token's KV is written into its branch's open block, and the segments are the distinct blocks on all branches'
paths, each listing the rows that read it, so a prefix shared by 32 branches is one segment with 32 queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ttc.engine.kv_tree import KVBlock
from ttc.kernels import Segment


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
        self.groups = [(block, used, torch.tensor(rows, dtype=torch.int64)) for block, used, rows in groups.values()]
        self.own = [torch.tensor([row], dtype=torch.int64) for row in range(len(prefixes))]

    def segments_for(self, layer: int, keys: Tensor, values: Tensor) -> list[Segment]:
        own = self.scratch[layer]
        own[0].copy_(keys)
        own[1].copy_(values)
        segments = [Segment(block.keys(layer, used), block.values(layer, used), rows)
                    for block, used, rows in self.groups]
        segments += [Segment(own[0, row], own[1, row], rows, causal=True) for row, rows in enumerate(self.own)]
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


__all__ = ["DecodePlan", "ExtendPlan"]
