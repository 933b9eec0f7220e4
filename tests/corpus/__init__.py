"""Corpora for differential testing: each model is compiled for host and checked against its reference runtime.

real_models: published models from PyPI wheels (pinned, sha256-checked, cached; see real_models.py).
generated: seeded random small graphs (see generated.py).
Only code lives here; model files are fetched or generated at test time, never committed.
"""
