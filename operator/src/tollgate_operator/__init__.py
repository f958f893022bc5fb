"""Tollgate operator (never named `operator`: that would shadow the standard library)."""
