"""Shared CLI plumbing: the backend for this invocation, JSON output, progress bars, error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from registry import errors
from registry.backend import RegistryBackend
from registry.client import HttpRegistry
from registry.config import Settings

# Exit codes: 1 invalid input or other failure, 2 usage (click), 3 not found, 4 conflict,
# 5 registry or storage unavailable, 6 a check said no (validation failed, a promotion gate
# failed), 7 not authorized (no token or a bad one: 401; a token without the scope or
# namespace, or a request the registry does not allow: 403), 70 internal error.
EXIT_CODES: list[tuple[type[errors.RegistryError], int]] = [
    (errors.Unauthenticated, 7),
    (errors.Forbidden, 7),
    (errors.CheckFailed, 6),
    (errors.NotFound, 3),
    (errors.Conflict, 4),
    (errors.RegistryUnavailable, 5),
    (errors.StorageError, 5),
    (errors.SchemaOutdated, 5),
]


def exit_code_for(exc: errors.RegistryError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@dataclass
class CliState:
    url: str | None
    token: str | None
    json: bool
    _backend: RegistryBackend | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        return Settings()

    def backend(self) -> RegistryBackend:
        """The registry this invocation talks to: a server with --url, else the embedded one."""
        if self._backend is None:
            if self.url:
                self._backend = HttpRegistry(self.url, token=self.token)
            else:
                from registry.local import LocalRegistry

                self._backend = LocalRegistry(self.settings())
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """Print exactly one JSON document with --json, else the human form."""
        if self.json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            human()

    def progress(self, desc: str, total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
        from tqdm import tqdm

        # disable=None: bars only on a terminal, so logs and --json output stay clean.
        bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                   file=sys.stderr, disable=None, leave=False)
        return bar.update, bar.close


_pass_state = click.make_pass_decorator(CliState)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(CliState).json = True


def pass_state(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the CliState, and accept ``--json`` after the command too (``show X --json``)."""
    return click.option("--json", "json_output", is_flag=True, expose_value=False,
                        callback=_set_json, help="Print exactly one JSON document.")(
        _pass_state(f))
