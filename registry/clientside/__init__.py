"""Code that runs in the CLI's process (a laptop, a CI runner, a GPU node), never in the API
server: push and pull, merged export, CI provenance, process exit. It reaches a registry only
through a ``registry.backend.RegistryBackend`` (HTTP or embedded)."""
