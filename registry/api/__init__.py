"""HTTP API: app factory, dependencies, error handlers, health and metrics."""
