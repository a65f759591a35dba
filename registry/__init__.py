"""adapter-registry: a registry for LLM fine-tuning adapters."""

__version__ = "0.1.0"
