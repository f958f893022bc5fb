"""Tollgate operator (never named `operator`: that would shadow the standard library)."""

__version__ = "0.1.0"
