"""Runs the whole stack locally as separate processes: ``aisle demo`` and the end-to-end tests use it."""
