"""Database timeouts: bounded defaults, set from the environment, zero refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registry.config import Settings
from registry.db.timeouts import DbTimeouts


def test_defaults_answer_within_about_30_seconds(monkeypatch):
    for name in ("CONNECT", "POOL", "STATEMENT"):
        monkeypatch.delenv(f"REGISTRY_DB_{name}_TIMEOUT_SECONDS", raising=False)
    timeouts = Settings().db_timeouts()
    assert timeouts == DbTimeouts()
    assert 0 < timeouts.connect_seconds <= 5
    assert 0 < timeouts.pool_seconds <= 10
    assert 0 < timeouts.statement_seconds <= 30


def test_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("REGISTRY_DB_CONNECT_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("REGISTRY_DB_POOL_TIMEOUT_SECONDS", "4.5")
    monkeypatch.setenv("REGISTRY_DB_STATEMENT_TIMEOUT_SECONDS", "12")
    assert Settings().db_timeouts() == DbTimeouts(connect_seconds=3, pool_seconds=4.5,
                                                  statement_seconds=12)


@pytest.mark.parametrize("name", ["CONNECT", "POOL", "STATEMENT"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_is_refused(monkeypatch, name, value):
    # 0 would mean "wait forever" to libpq and PostgreSQL.
    monkeypatch.setenv(f"REGISTRY_DB_{name}_TIMEOUT_SECONDS", value)
    with pytest.raises(ValidationError, match=f"REGISTRY_DB_{name}_TIMEOUT_SECONDS"):
        Settings()
