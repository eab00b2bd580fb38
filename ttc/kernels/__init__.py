"""Prefix-sharing (cascade) attention over a search forest.

Branches of a test-time search share long prefixes. Plain attention reads a shared prefix's KV once per branch;
cascade attention reads each shared segment once for all the branches that include it and merges the partial
results exactly through their log-sum-exp. ``forest_attention`` accepts any forest of segments, not just one
shared prefix per batch. A forward's layers attend one forest over different KV: ``forest_layout`` checks the
structure once and ``layout_attention`` takes each layer's tensors.
"""

from ttc.kernels.dispatch import forest_attention, forest_attention_with_lse, layout_attention
from ttc.kernels.reference import merge_state
from ttc.kernels.segments import ForestLayout, Segment, forest_layout

__all__ = [
    "ForestLayout",
    "Segment",
    "forest_attention",
    "forest_attention_with_lse",
    "forest_layout",
    "layout_attention",
    "merge_state",
]
