"""`adapter-registry token create|list|revoke` and `adapter-registry audit`: access control."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from cli.output import CliState, fail, pass_state
from registry.auth.schemas import MAX_EXPIRES_SECONDS, CreateTokenIn, TokenOut
from registry.auth.scopes import Scope
from registry.events.schemas import EventOut

_DURATION = re.compile(r"^([1-9][0-9]{0,8})([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str, *, option: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w`` as a timedelta; a one-line exit 1 otherwise."""
    match = _DURATION.match(value.strip())
    if match is None:
        fail(f"invalid {option} {value!r}: a number and a unit, e.g. 30m, 12h, 90d or 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_EXPIRES_SECONDS:
        fail(f"invalid {option} {value!r}: at most {MAX_EXPIRES_SECONDS // 86400} days")
    return timedelta(seconds=seconds)


def parse_since(value: str) -> datetime:
    """``--since``: a duration back from now (``24h``, ``7d``) or an ISO 8601 time (UTC when
    it names no timezone)."""
    if _DURATION.match(value.strip()):
        return datetime.now(UTC) - parse_duration(value, option="--since")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"invalid --since {value!r}: a duration (24h, 7d) or an ISO 8601 time "
             "(2026-01-31, 2026-01-31T12:00:00Z)")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@click.group("token")
def token() -> None:
    """Scoped API tokens: create (the secret is printed once), list, revoke.

    Against a server (--url) an admin token is needed; without --url they act on the database
    of $REGISTRY_HOME or REGISTRY_DATABASE_URL directly (how the first admin token is made).
    """


def _token_line(t: TokenOut) -> str:
    namespaces = ",".join(t.namespaces) or "*"
    expires = f"{t.expires_at:%Y-%m-%d %H:%M:%S}" if t.expires_at else "never"
    return (f"{t.name}\t{t.status}\tscopes={','.join(t.scopes)}\tnamespaces={namespaces}\t"
            f"expires={expires}")


@token.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice([s.value for s in Scope]),
              help="What the token may do (repeat): read (every GET), push, validate, promote, "
                   "admin (everything).")
@click.option("--namespace", "namespaces", multiple=True, metavar="NS",
              help="Limit the token to NS/* adapters (repeat). Default: every adapter.")
@click.option("--expires", default=None, metavar="DURATION",
              help="Lifetime, e.g. 90d, 12h, 2w. Default: never expires.")
@pass_state
def create(state: CliState, name: str, scopes: tuple[str, ...], namespaces: tuple[str, ...],
           expires: str | None) -> None:
    """Create token NAME and print its secret: the only time it is shown."""
    lifetime = parse_duration(expires, option="--expires") if expires is not None else None
    body = CreateTokenIn(name=name, scopes=[Scope(s) for s in scopes],
                         namespaces=list(namespaces),
                         expires_in_seconds=int(lifetime.total_seconds()) if lifetime else None)
    created = state.backend().create_token(body)

    def human() -> None:
        click.echo(created.token)
        click.echo(f"token {created.name!r} created (scopes: {', '.join(created.scopes)}); "
                   "store the secret now: it is not shown again", err=True)

    state.emit(created.model_dump(mode="json"), human)


@token.command("list")
@pass_state
def list_tokens(state: CliState) -> None:
    """Every token with its scopes, namespaces, expiry and status (never a secret)."""
    found = state.backend().list_tokens()

    def human() -> None:
        if not found:
            click.echo("no tokens")
        for t in found:
            click.echo(_token_line(t))

    state.emit([t.model_dump(mode="json") for t in found], human)


@token.command("revoke")
@click.argument("name")
@pass_state
def revoke(state: CliState, name: str) -> None:
    """Revoke token NAME at once (its name stays taken: the audit log refers to it)."""
    revoked = state.backend().revoke_token(name)
    state.emit(revoked.model_dump(mode="json"),
               lambda: click.echo(f"revoked token {revoked.name!r}"))


def _event_line(e: EventOut) -> str:
    what = e.adapter or ""
    if e.version is not None:
        what += f":{e.version}"
    if e.alias:
        what += f"@{e.alias}"
    if not what and e.payload.get("token"):
        what = f"token {e.payload['token']}"
    return f"{e.created_at:%Y-%m-%d %H:%M:%S}\t{e.type}\t{what or '-'}\t{e.actor or '-'}"


MAX_AUDIT = 100_000


@click.command()
@click.option("--since", default=None, metavar="WHEN",
              help="Only actions from WHEN: a duration back from now (24h, 7d) or an ISO 8601 "
                   "time. Default: all.")
@pass_state
def audit(state: CliState, since: str | None) -> None:
    """Every recorded action, oldest first: versions, promotions, rollbacks, forced moves,
    archives, validations, exports, token create/revoke, each with its actor (the token's
    name when auth is on)."""
    when = parse_since(since) if since is not None else None
    backend = state.backend()
    found: list[EventOut] = []
    after = 0
    while len(found) < MAX_AUDIT:
        page = backend.audit(since=when, after=after, limit=1000)
        found.extend(page.events)
        if page.next_after is None or len(page.events) < 1000:
            break
        after = page.next_after

    def human() -> None:
        if not found:
            click.echo("no recorded actions")
        for e in found:
            click.echo(_event_line(e))

    state.emit([e.model_dump(mode="json") for e in found], human)
