"""Benchmarks for the adapter registry: big-file transfer (local store, S3) and registration."""
