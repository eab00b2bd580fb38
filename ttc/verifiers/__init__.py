"""ttc.verifiers."""
