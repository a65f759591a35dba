"""Events: the append-only record of what happened, written with each change (outbox)."""
