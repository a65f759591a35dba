"""Which recorded exports a client reuses instead of merging again (trusted_because)."""

from __future__ import annotations

import pytest

from registry.clientside.export import trusted_because
from registry.exports.schemas import ExportOut

RECORD = {"name": "bot", "version": 1, "base": "b", "base_revision": "r", "dtype": "float32",
          "total_size": 1, "files": [], "created_at": "2026-12-01T00:00:00Z", "created_by": None}


@pytest.mark.parametrize(("provenance", "own", "why"), [
    ("job:17", None, "produced by a registry export job"),
    ("job:17", "embedded", "produced by a registry export job"),
    ("embedded", "embedded", "recorded by this embedded registry"),
    ("token:ci", "token:ci", "uploaded by you"),
    ("token:ci", "token:other", None),
    ("token:ci", None, None),
    ("anonymous", None, None),  # anyone: never trusted, not even by another anonymous caller
    ("anonymous", "anonymous", None),
    ("embedded", None, None),
])
def test_trusted_provenances(provenance: str, own: str | None, why: str | None) -> None:
    export = ExportOut.model_validate({**RECORD, "provenance": provenance})
    assert trusted_because(export, own) == why


def test_a_record_from_a_server_without_provenance_is_anonymous() -> None:
    export = ExportOut.model_validate(RECORD)
    assert export.provenance == "anonymous"
    assert trusted_because(export, "embedded") is None
