"""Prefix-sharing (cascade) attention over a search forest.

Branches of a test-time search share long prefixes. Plain attention reads a shared prefix's KV once per branch;
cascade attention reads each shared segment once for all the branches that include it and merges the partial
results exactly through their log-sum-exp. ``forest_attention`` accepts any forest of segments, not just one
shared prefix per batch.
"""

from ttc.kernels.dispatch import forest_attention, forest_attention_with_lse
from ttc.kernels.reference import merge_state
from ttc.kernels.segments import Segment

__all__ = ["Segment", "forest_attention", "forest_attention_with_lse", "merge_state"]
