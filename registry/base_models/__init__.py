"""Base models: registration from local, Hugging Face and S3 sources; manifests; lookup."""
