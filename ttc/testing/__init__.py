"""Test doubles for strategy logic. Real backends live in ``ttc.backends``; nothing here talks to a model."""

from ttc.testing.scripted import ScriptedBackend, guessing_responder

__all__ = ["ScriptedBackend", "guessing_responder"]
