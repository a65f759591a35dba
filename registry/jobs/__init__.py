"""Jobs: the durable queue workers claim work from (enqueue, claim, lease, heartbeat, report)."""
