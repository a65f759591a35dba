"""Shared fixtures: the two deployment shapes (SQLite + local store, PostgreSQL + S3 over HTTP)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from registry.config import Settings
from registry.context import RegistryContext
from registry.db.base import Base
from registry.db.engine import make_engine, upgrade

PG_HOST = os.environ.get("REGISTRY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("REGISTRY_TEST_PG_PORT", "5432")
PG_USER = os.environ.get("REGISTRY_TEST_PG_USER", "postgres")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database for this test run, created here and dropped at the end."""
    admin = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        message = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {type(exc).__name__}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    name = f"adapter_registry_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_migrated(pg_database: str) -> str:
    engine = make_engine(pg_database)
    upgrade(engine)
    engine.dispose()
    return pg_database


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server over HTTP; boto3 finds it through AWS_ENDPOINT_URL."""
    from tests.integration.s3_server import start_moto_server

    endpoint, stop = start_moto_server()
    saved = {k: os.environ.get(k) for k in (
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    from tests.integration.s3_server import s3_client

    bucket = "registry-test"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


def _truncate(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


BACKENDS = ["sqlite-local", "postgres-s3"]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for one deployment shape, with a clean database and an empty blob store."""
    home = tmp_path / "home"
    if request.param == "sqlite-local":
        return Settings(home=home)
    url = request.getfixturevalue("pg_migrated")
    bucket = request.getfixturevalue("s3_bucket")
    _truncate(url)
    return Settings(
        home=home,
        database_url=url,
        blob_url=f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}",
        auto_migrate=False,
        s3_part_bytes=5 * 1024 * 1024,
    )


@pytest.fixture
def context(settings: Settings) -> Iterator[RegistryContext]:
    ctx = RegistryContext.open(settings)
    try:
        yield ctx
    finally:
        ctx.close()


@dataclass
class LiveServer:
    url: str
    context: RegistryContext


@pytest.fixture
def live_server(context: RegistryContext) -> Iterator[LiveServer]:
    """The real API on a real socket (uvicorn in a thread), so requests really stream."""
    import uvicorn

    from registry.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(context=context), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", context)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[object]:
    from registry.client import HttpRegistry

    client = HttpRegistry(live_server.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real adapters made with peft on tiny random models, built once per run."""
    from tests.peft_factory import make_adapter

    root = tmp_path_factory.mktemp("adapters")
    kinds = ["lora", "lora_rank_pattern", "dora", "ia3", "modules_to_save", "gpt2_lora",
             "bert_lora", "loha", "lokr", "prompt_tuning"]
    out = {}
    for kind in kinds:
        out[kind] = make_adapter(root / kind, kind, base_model_name_or_path="tiny-llama")
    out["lora_v2"] = make_adapter(root / "lora_v2", "lora", seed=1,
                                  base_model_name_or_path="tiny-llama")
    return out


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny base checkpoints (save_pretrained, safetensors) matching the factory's adapters."""
    from tests.peft_factory import save_base, tiny_bert, tiny_gpt2, tiny_llama

    root = tmp_path_factory.mktemp("bases")
    return {
        "llama": save_base(tiny_llama(), root / "tiny-llama"),
        "gpt2": save_base(tiny_gpt2(), root / "tiny-gpt2"),
        "bert": save_base(tiny_bert(), root / "tiny-bert"),
    }
