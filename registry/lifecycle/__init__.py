"""Lifecycle: aliases (NAME@ALIAS), gated promotion, rollback, alias history, archive."""
