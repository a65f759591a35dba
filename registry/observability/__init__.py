"""Metrics (Prometheus) and logs (one line per request or job, text or JSON) of the server and
the worker; no database or HTTP framework here: callers hand in what they observe."""
