"""The webhook dispatcher: claims due deliveries, POSTs them signed, records each outcome.

It runs in the server process (started and stopped with the app's lifespan). Claims are safe
with several replicas on one database: due rows are taken in one statement (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL; SQLite serialises writers on ``BEGIN IMMEDIATE``) and leased until
``claimed_until``; an outcome is written only while the attempt still holds the row, and a
dead server's claims become due again when their lease expires.

Outcomes: 2xx delivered; 5xx, 429, a timeout or a connection error retried after
``base * 2^(attempt-1)`` seconds (each wait capped), until ``give_up`` seconds after the event,
then failed; any other answer (4xx, a redirect, which is never followed) failed; a destination
that resolves to a refused address failed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

import registry
from registry.config import Settings
from registry.db.base import utcnow
from registry.db.engine import session_scope
from registry.db.models import DeliveryStatus, Event, WebhookDelivery
from registry.errors import DestinationNotAllowed, InvalidInput
from registry.events import signing
from registry.events.destinations import resolve
from registry.events.outbox import add_waiter, remove_waiter
from registry.observability.metrics import observe_webhook_delivery

log = logging.getLogger(__name__)

# What is kept of a receiver's answer (and read of it at all).
MAX_RESPONSE_BYTES = 1024
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Claimed:
    """One claimed delivery, with everything needed to send it (no session held)."""

    delivery_id: int
    attempt: int
    url: str
    secret: str
    msg_id: str
    body: bytes
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool
    status_code: int | None = None
    response: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return "delivered" if self.delivered else "retry" if self.retry else "failed"


def message(event: Event) -> tuple[str, bytes]:
    """The message id (the same on every attempt: receivers deduplicate on it) and the JSON
    body ``{"id","type","timestamp","data"}`` of an event."""
    msg_id = f"evt_{event.id}"
    body = {
        "id": msg_id,
        "type": event.type,
        "timestamp": event.created_at.isoformat(),
        "data": {"adapter": event.adapter, "version": event.version, "alias": event.alias,
                 "actor": event.actor, "payload": event.payload or {}},
    }
    return msg_id, json.dumps(body, separators=(",", ":"), default=str).encode()


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …)."""
    return float(min(cap, base * 2 ** min(max(attempt - 1, 0), 62)))


def claim(session: Session, *, limit: int, lease_seconds: float,
          now: datetime | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries: pending and due, or delivering with an expired
    lease (a dead server's), oldest due first. Deliveries of removed webhooks are failed.
    """
    now = now or utcnow()
    due = or_(
        and_(WebhookDelivery.status == DeliveryStatus.pending,
             WebhookDelivery.next_attempt_at <= now),
        and_(WebhookDelivery.status == DeliveryStatus.delivering,
             WebhookDelivery.claimed_until < now),
    )
    candidate = (
        select(WebhookDelivery.id).where(due)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("candidate")
    )
    stmt = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == candidate.c.id)
        .values(status=DeliveryStatus.delivering, attempts=WebhookDelivery.attempts + 1,
                claimed_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        .returning(WebhookDelivery.id)
    )
    ids = list(session.scalars(stmt))
    if not ids:
        return []
    rows = session.scalars(
        select(WebhookDelivery)
        .options(selectinload(WebhookDelivery.webhook), selectinload(WebhookDelivery.event))
        .where(WebhookDelivery.id.in_(ids)).order_by(WebhookDelivery.id)
        .execution_options(populate_existing=True)
    ).all()
    claimed: list[Claimed] = []
    for row in rows:
        if not row.webhook.active:
            row.status, row.claimed_until = DeliveryStatus.failed, None
            row.last_error = "webhook removed"
            continue
        msg_id, body = message(row.event)
        claimed.append(Claimed(delivery_id=row.id, attempt=row.attempts, url=row.webhook.url,
                               secret=row.webhook.secret, msg_id=msg_id, body=body,
                               created_at=row.created_at))
    session.flush()
    return claimed


def _read_prefix(response: httpx.Response) -> str:
    kept = b""
    for chunk in response.iter_bytes():
        kept += chunk
        if len(kept) >= MAX_RESPONSE_BYTES:
            break
    return kept[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace")


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def send(claimed: Claimed, *, client: httpx.Client, allow_private: bool,
         timeout: float) -> Outcome:
    """POST one delivery to the address its host resolves to now, if that is allowed."""
    try:
        dest = resolve(claimed.url, allow_private=allow_private)
    except DestinationNotAllowed as exc:
        return Outcome(delivered=False, retry=False, error=exc.detail)
    except InvalidInput as exc:  # the name does not resolve (now): DNS may come back
        return Outcome(delivered=False, retry=True, error=exc.detail)
    headers = {
        "content-type": "application/json",
        "user-agent": f"adapter-registry-webhooks/{registry.__version__}",
        "host": dest.host_header,
        **signing.headers(claimed.secret, msg_id=claimed.msg_id, timestamp=int(time.time()),
                          body=claimed.body),
    }
    extensions: dict[str, Any] = {}
    if dest.scheme == "https" and dest.host not in dest.addresses:
        extensions["sni_hostname"] = dest.host  # TLS name and certificate check: the host's
    code: int | None = None
    error = "no address to connect to"
    # The checked addresses in order (a name may resolve to ::1 and 127.0.0.1); the next one
    # only when the connection itself failed, so a request is never sent twice.
    for address in dest.addresses:
        try:
            with client.stream("POST", dest.connect_url(address), content=claimed.body,
                               headers=headers, extensions=extensions) as response:
                prefix = _read_prefix(response)
                code = response.status_code
            break
        except httpx.ConnectError as exc:
            error = _short(f"connection failed: {type(exc).__name__}: {exc}")
        except httpx.TimeoutException:
            return Outcome(delivered=False, retry=True, error=f"timed out after {timeout:g} s")
        except httpx.HTTPError as exc:
            return Outcome(delivered=False, retry=True,
                           error=_short(f"connection failed: {type(exc).__name__}: {exc}"))
    if code is None:
        return Outcome(delivered=False, retry=True, error=error)
    if 200 <= code < 300:
        return Outcome(delivered=True, retry=False, status_code=code, response=prefix)
    if code == 429 or code >= 500:
        return Outcome(delivered=False, retry=True, status_code=code, response=prefix,
                       error=f"HTTP {code}")
    error = (f"HTTP {code}: redirects are not followed" if 300 <= code < 400
             else f"HTTP {code}")
    return Outcome(delivered=False, retry=False, status_code=code, response=prefix, error=error)


def record_outcome(session: Session, claimed: Claimed, outcome: Outcome, *,
                   settings: Settings, now: datetime | None = None) -> str | None:
    """Write an attempt's outcome, if the attempt still holds the delivery.

    Returns:
        The delivery's new status, or None when its lease was lost meanwhile (another server
        took it over; nothing is written).
    """
    now = now or utcnow()
    values: dict[str, Any] = {"updated_at": now, "claimed_until": None,
                              "last_status_code": outcome.status_code,
                              "last_response": outcome.response, "last_error": outcome.error}
    if outcome.delivered:
        values.update(status=DeliveryStatus.delivered, delivered_at=now)
    elif outcome.retry:
        delay = backoff(claimed.attempt, base=settings.webhook_retry_base_seconds,
                        cap=settings.webhook_retry_max_seconds)
        next_at = now + timedelta(seconds=delay)
        if next_at > claimed.created_at + timedelta(seconds=settings.webhook_give_up_seconds):
            values.update(status=DeliveryStatus.failed, last_error=_short(
                f"{outcome.error}; gave up after {claimed.attempt} attempts"))
        else:
            values.update(status=DeliveryStatus.pending, next_attempt_at=next_at)
    else:
        values.update(status=DeliveryStatus.failed)
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claimed.delivery_id,
               WebhookDelivery.attempts == claimed.attempt,
               WebhookDelivery.status == DeliveryStatus.delivering)
        .values(**values)
        .returning(WebhookDelivery.status, WebhookDelivery.next_attempt_at)
    ).one_or_none()
    if result is None:
        return None
    status: DeliveryStatus = result[0]
    return status.value


# A recorded status as registry_webhook_deliveries_total's outcome (None: the lease was lost).
_METRIC_OUTCOME: dict[str | None, str] = {
    DeliveryStatus.delivered.value: "delivered",
    DeliveryStatus.pending.value: "retrying",
    DeliveryStatus.failed.value: "failed",
}


class Dispatcher:
    """A background thread delivering webhooks for one process (one per app)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None

    def start(self) -> None:
        s = self.settings
        self._client = httpx.Client(
            timeout=httpx.Timeout(s.webhook_timeout_seconds,
                                  connect=min(5.0, s.webhook_timeout_seconds)),
            follow_redirects=False,
            trust_env=False,  # a proxy would connect to the name, not the checked address
        )
        if s.webhook_concurrency > 1:
            self._pool = ThreadPoolExecutor(s.webhook_concurrency,
                                            thread_name_prefix="webhook-send")
        add_waiter(self._wake)
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; wait (a send's timeout at most) for the sends under way."""
        self._stop.set()
        self._wake.set()
        remove_waiter(self._wake)
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def run_once(self) -> tuple[int, float | None]:
        """Claim a batch, send it, record the outcomes.

        Returns:
            How many deliveries were claimed, and the soonest retry this batch scheduled
            (seconds from now), if any.
        """
        s = self.settings
        with session_scope(self.sessions) as session:
            batch = claim(session, limit=s.webhook_concurrency,
                          lease_seconds=s.webhook_lease_seconds)
        if not batch:
            return 0, None
        results: Iterable[tuple[Claimed, Outcome]]
        if self._pool is not None and len(batch) > 1:
            results = self._pool.map(self._send, batch)
        else:
            results = map(self._send, batch)
        soonest: float | None = None
        for claimed, outcome in results:
            with session_scope(self.sessions) as session:
                status = record_outcome(session, claimed, outcome, settings=s)
            observe_webhook_delivery(_METRIC_OUTCOME.get(status, "other"))
            if status is None:
                log.warning("webhook delivery %s: lease lost before its outcome (%s) was "
                            "recorded", claimed.delivery_id, outcome.label)
            elif status == DeliveryStatus.pending.value:
                delay = backoff(claimed.attempt, base=s.webhook_retry_base_seconds,
                                cap=s.webhook_retry_max_seconds)
                soonest = delay if soonest is None else min(soonest, delay)
            if outcome.error and status is not None:
                log.info("webhook delivery %s attempt %s: %s (%s)", claimed.delivery_id,
                         claimed.attempt, outcome.error, status)
        return len(batch), soonest

    def _send(self, claimed: Claimed) -> tuple[Claimed, Outcome]:
        assert self._client is not None
        try:
            outcome = send(claimed, client=self._client,
                           allow_private=self.settings.webhook_allow_private,
                           timeout=self.settings.webhook_timeout_seconds)
        except Exception as exc:  # a bug in one send must not stop the others: retried
            log.exception("webhook delivery %s failed unexpectedly", claimed.delivery_id)
            outcome = Outcome(delivered=False, retry=True,
                              error=_short(f"internal error: {type(exc).__name__}: {exc}"))
        return claimed, outcome

    def _run(self) -> None:
        poll = self.settings.webhook_poll_seconds
        failing = False
        while not self._stop.is_set():
            # Cleared before looking, so a wake-up during the round is not lost.
            self._wake.clear()
            wait = poll
            try:
                claimed, soonest = self.run_once()
                failing = False
                if claimed >= self.settings.webhook_concurrency:
                    continue  # a full batch: more may be due
                if soonest is not None:
                    wait = min(wait, soonest)
            except Exception as exc:  # the database is down, the schema went away: retry
                if not failing:
                    log.warning("webhook dispatcher: %s: %s", type(exc).__name__, exc)
                failing = True
                wait = max(poll, 5.0)
            self._wake.wait(wait)
