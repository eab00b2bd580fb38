"""Importing this module registers every built-in strategy."""

from ttc.strategies import beam, best_of_n, dvts, ets, lookahead, parallel_thinking, rebase, self_consistency

__all__ = ["beam", "best_of_n", "dvts", "ets", "lookahead", "parallel_thinking", "rebase", "self_consistency"]
