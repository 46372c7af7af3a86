"""Fixtures by what they need beyond the package itself (conftest.py holds the pure ones)."""
