"""ttc.backends."""
