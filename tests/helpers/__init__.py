"""Helpers that test modules share: config composition, CLI subprocesses, tiny fixtures on disk, a rank probe.

Fixtures that pytest injects by name stay in `tests/conftest.py`, which imports from here.
"""
