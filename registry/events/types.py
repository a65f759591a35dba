"""Event type names (stable: webhooks and audit consumers filter on them)."""

from __future__ import annotations

VERSION_CREATED = "version.created"
VERSION_VALIDATED = "version.validated"
VERSION_VALIDATION_FAILED = "version.validation_failed"
VERSION_ARCHIVED = "version.archived"
ALIAS_PROMOTED = "alias.promoted"
ALIAS_ROLLED_BACK = "alias.rolled_back"
ALIAS_DELETED = "alias.deleted"
EXPORT_CREATED = "export.created"

# The types a webhook may subscribe to (access-control events join the audit log only).
DELIVERABLE: tuple[str, ...] = (
    VERSION_CREATED,
    VERSION_VALIDATED,
    VERSION_VALIDATION_FAILED,
    VERSION_ARCHIVED,
    ALIAS_PROMOTED,
    ALIAS_ROLLED_BACK,
    ALIAS_DELETED,
    EXPORT_CREATED,
)

# Webhook changes (audit only: webhooks never receive them) and the event `webhook test`
# enqueues for one webhook.
WEBHOOK_ADDED = "webhook.added"
WEBHOOK_REMOVED = "webhook.removed"
WEBHOOK_TEST = "webhook.test"
