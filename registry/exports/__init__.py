"""Merged-model exports: records of merged checkpoints, and running an export."""
