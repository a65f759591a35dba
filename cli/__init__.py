"""Command-line interface: `adapter-registry`."""
