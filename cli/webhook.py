"""`adapter-registry webhook add|list|rm|test|deliveries`: signed, retried event delivery."""

from __future__ import annotations

import click

from cli.output import CliState, fail, pass_state
from registry.events.types import DELIVERABLE
from registry.events.webhook_schemas import CreateWebhookIn, DeliveryOut, WebhookOut


@click.group("webhook")
def webhook() -> None:
    """Webhooks: POST signed JSON to a URL when events happen (admin). The server sends them
    (with retries); the embedded CLI records them for a server on the same database."""


def _line(w: WebhookOut) -> str:
    scope = f"adapter={w.adapter}" if w.adapter else "all adapters"
    return f"{w.id}\t{w.url}\t{','.join(w.events)}\t{scope}\tby {w.created_by or '-'}"


def _events(text: str) -> list[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in DELIVERABLE]
    if unknown or not types:
        fail(f"unknown event type(s) {', '.join(unknown) or repr(text)}; choose from "
             f"{', '.join(DELIVERABLE)}")
    return types


@webhook.command("add")
@click.argument("url")
@click.option("--events", "events", required=True, metavar="TYPE,…",
              help=f"Comma-separated event types: {', '.join(DELIVERABLE)}.")
@click.option("--adapter", default=None, metavar="NAME", help="Only this adapter's events.")
@click.option("--secret", default=None, metavar="whsec_…",
              help="Signing secret (whsec_<base64 of 24-64 bytes>); generated when omitted.")
@pass_state
def add(state: CliState, url: str, events: str, adapter: str | None,
        secret: str | None) -> None:
    """Deliver events to URL. Sends nothing now (`webhook test ID` does); prints the signing
    secret once."""
    body = CreateWebhookIn(url=url, events=_events(events), adapter=adapter, secret=secret)
    out = state.backend().add_webhook(body)

    def human() -> None:
        click.echo(f"added webhook {out.id}: {out.url} ({','.join(out.events)})")
        click.echo(f"secret: {out.secret}")
        click.echo("  (shown once: keep it to verify the webhook-signature header)")

    state.emit(out.model_dump(mode="json"), human)


@webhook.command("list")
@pass_state
def list_cmd(state: CliState) -> None:
    """The active webhooks (never their secrets)."""
    found = state.backend().list_webhooks()

    def human() -> None:
        if not found:
            click.echo("no webhooks")
        for w in found:
            click.echo(_line(w))

    state.emit([w.model_dump(mode="json") for w in found], human)


@webhook.command("rm")
@click.argument("webhook_id", type=click.IntRange(min=1), metavar="ID")
@pass_state
def rm(state: CliState, webhook_id: int) -> None:
    """Remove webhook ID (deliveries not yet sent are failed; the history stays)."""
    out = state.backend().remove_webhook(webhook_id)
    state.emit(out.model_dump(mode="json"),
               lambda: click.echo(f"removed webhook {out.id}: {out.url}"))


@webhook.command("test")
@click.argument("webhook_id", type=click.IntRange(min=1), metavar="ID")
@pass_state
def test(state: CliState, webhook_id: int) -> None:
    """Queue a webhook.test event for webhook ID; see the outcome with `webhook deliveries`."""
    out = state.backend().test_webhook(webhook_id)
    state.emit(out.model_dump(mode="json"),
               lambda: click.echo(f"queued delivery {out.id} (event {out.event_id}, "
                                  f"{out.event_type}) to webhook {out.webhook_id}"))


def _delivery_line(d: DeliveryOut) -> str:
    code = d.last_status_code if d.last_status_code is not None else "-"
    parts = [str(d.id), d.event_type, f"event={d.event_id}", d.status,
             f"attempts={d.attempts}", f"last={code}"]
    if d.next_attempt_at is not None:
        parts.append(f"next={d.next_attempt_at:%Y-%m-%d %H:%M:%S}")
    if d.last_error:
        parts.append(d.last_error)
    return "\t".join(parts)


@webhook.command("deliveries")
@click.argument("webhook_id", type=click.IntRange(min=1), metavar="ID")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@pass_state
def deliveries(state: CliState, webhook_id: int, limit: int) -> None:
    """Webhook ID's deliveries, newest first: status, attempts, last status code, next retry."""
    found = state.backend().webhook_deliveries(webhook_id, limit=limit)

    def human() -> None:
        if not found:
            click.echo("no deliveries")
        for d in found:
            click.echo(_delivery_line(d))

    state.emit([d.model_dump(mode="json") for d in found], human)
