"""Blobs: content-addressed uploads, their database rows, and garbage collection."""
