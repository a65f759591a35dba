"""Plugins for the systems a registry serves (vLLM). Each keeps its logic in a module that
imports only the registry, and the host's glue (which imports the host) in another, imported
only by the host's plugin loader."""
