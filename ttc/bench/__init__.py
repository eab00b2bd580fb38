"""ttc.bench."""
