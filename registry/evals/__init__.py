"""Evals: suites, which adapters run them, and scores (from workers, CI jobs or people)."""
