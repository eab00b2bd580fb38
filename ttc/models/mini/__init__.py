"""The bundled mini models: a reasoner, a draft model and a process reward model for the synthetic benchmark.

The weights live in ``reasoner/``, ``draft/`` and ``prm/`` next to this file; the shared character tokenizer is
defined in :mod:`ttc.models.mini.tokenizer`.
"""
