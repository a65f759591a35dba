"""`adapter-registry server`: run the HTTP API."""

from __future__ import annotations

import click

from cli.output import CliState, pass_state


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@pass_state
def server(state: CliState, host: str, port: int, log_level: str) -> None:
    """Serve the HTTP API (migrations are applied on start for the embedded registry)."""
    import uvicorn

    from registry.api.app import create_app
    from registry.context import RegistryContext
    from registry.observability.logs import configure_logging
    from registry.storage.local import LocalBlobStore

    settings = state.settings()
    # One handler for every logger (uvicorn's too), in REGISTRY_LOG_FORMAT; the registry logs
    # one line per request itself, so uvicorn's access log is off.
    configure_logging(settings.log_format, log_level)
    context = RegistryContext.open(settings)  # fail fast, with a one-line reason, before binding
    if isinstance(context.store, LocalBlobStore):
        # Uploads a killed server left in this host's temp directory (live ones hold a lock).
        context.store.cleanup_temp(settings.gc_grace_seconds)
    try:
        uvicorn.run(create_app(context=context), host=host, port=port, log_level=log_level,
                    log_config=None, access_log=False)
    finally:
        context.close()
