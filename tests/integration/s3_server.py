"""A moto S3 server on localhost for tests: real HTTP, no patching of boto3."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

# moto accepts any credentials, but botocore refuses to sign a request without some.
TEST_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


def start_moto_server() -> tuple[str, Callable[[], None]]:
    """Start moto's threaded server on a free localhost port.

    Returns:
        ``(endpoint_url, stop)``; call ``stop()`` to shut the server down.
    """
    # Port 0: the OS picks a free port at bind time, so there is no probe-then-bind race.
    # werkzeug logs every request at INFO; that drowns the output of a failing test.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


def s3_client(endpoint_url: str, *, max_attempts: int = 3) -> Any:
    """Build a boto3 S3 client for a test endpoint.

    Args:
        endpoint_url: The server's URL, as :func:`start_moto_server` returns it.
        max_attempts: Total tries per request (1 disables retries).

    Returns:
        A boto3 S3 client using path-style addressing and dummy credentials.
    """
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=2,
        read_timeout=30,
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=config, **TEST_CREDENTIALS
    )
