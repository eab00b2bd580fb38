"""ttc.strategies."""
