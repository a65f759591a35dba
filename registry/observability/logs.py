"""Log lines of the server and the worker: one per request or job, as text or JSON
(``REGISTRY_LOG_FORMAT``), and the request id that ties a line to a response.

A line's structured fields travel in ``extra={"fields": {...}}``; the JSON formatter writes
them as top-level keys, the text formatter as ``key=value`` after the message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
# Echoed into a response header and every log line: bounded, and no character that could
# split a header or a log line, or be read as markup.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")
LOG_FORMATS = ("text", "json")


def request_id(incoming: str | None) -> str:
    """The id of a request: the client's ``X-Request-ID`` when it is 1-128 safe characters
    (letters, digits, ``. _ : + = / -``, a letter or digit first), a new one otherwise."""
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            if key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        head, sep, tail = text.partition("\n")  # a traceback stays below the first line
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) \
        else text


def configure_logging(log_format: str, level: str | int = "INFO") -> None:
    """Send every logger's records (uvicorn's included) to stderr in ``log_format``.

    Replaces the root logger's handlers, so calling it again switches format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # warnings.warn lines become records in the same format
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
