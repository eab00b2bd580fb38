"""Importing this module registers every built-in strategy."""

from ttc.strategies import best_of_n, self_consistency

__all__ = ["best_of_n", "self_consistency"]
