"""Validation, server side: request one, hand a worker its spec, record what the worker found."""
