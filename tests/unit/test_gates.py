"""Promotion gates' comparisons (pure): thresholds, no-regression in both directions, messages."""

from __future__ import annotations

import pytest

from registry.lifecycle.gates import (
    base_gate,
    failure_message,
    protected_gate,
    regression_gate,
    status_gate,
    threshold_gate,
)


@pytest.mark.parametrize(("kind", "value", "limit", "passed", "detail"), [
    ("max", 9.81, 9.5, False, "ppl.perplexity 9.81 > max 9.5"),
    ("max", 9.5, 9.5, True, "ppl.perplexity 9.5 <= max 9.5"),
    ("min", 0.79, 0.8, False, "ppl.perplexity 0.79 < min 0.8"),
    ("min", 0.8, 0.8, True, "ppl.perplexity 0.8 >= min 0.8"),
    ("min", None, 0.8, False, "ppl.perplexity: no score (min 0.8)"),
])
def test_thresholds(kind, value, limit, passed, detail):
    gate = threshold_gate(kind, "ppl.perplexity", value, limit)
    assert (gate.gate, gate.passed, gate.detail) == (f"{kind}:ppl.perplexity", passed, detail)


@pytest.mark.parametrize(("candidate", "current", "tolerance", "lower", "passed"), [
    (9.1, 9.0, 0.0, True, False),   # perplexity went up
    (9.1, 9.0, 0.1, True, True),    # within the tolerance
    (9.2, 9.0, 0.1, True, False),
    (8.0, 9.0, 0.0, True, True),
    (0.79, 0.80, 0.0, False, False),  # accuracy went down
    (0.79, 0.80, 0.02, False, True),
    (0.81, 0.80, 0.0, False, True),
    (0.80, 0.80, 0.0, False, True),   # equal is no regression
])
def test_no_regression_follows_the_metric_direction(candidate, current, tolerance, lower,
                                                     passed):
    gate = regression_gate("s.m", candidate, current, tolerance=tolerance, lower_better=lower,
                           current_ref="bot:1")
    assert gate.passed is passed
    assert ("lower is better" if lower else "higher is better") in gate.detail


def test_no_regression_without_a_comparison():
    assert regression_gate("s.m", 1.0, None, tolerance=0, lower_better=True,
                           current_ref=None).passed
    assert "has no score" in regression_gate("s.m", 1.0, None, tolerance=0, lower_better=True,
                                             current_ref="bot:1").detail
    missing = regression_gate("s.m", None, 1.0, tolerance=0, lower_better=True,
                              current_ref="bot:1")
    assert not missing.passed and missing.detail == "s.m: no score (no-regression)"


def test_status_base_protected_and_the_message():
    assert status_gate("registered", require_validated=False).passed
    assert not status_gate("failed", require_validated=False).passed
    assert not status_gate("registered", require_validated=True).passed
    assert status_gate("validated", require_validated=True).passed
    assert base_gate("tiny-llama", "tiny-llama").passed
    assert base_gate(None, "tiny-llama").detail == "linked to no base, policy requires tiny-llama"
    assert not protected_gate("  ").passed and protected_gate("incident 42").passed
    gates = [threshold_gate("max", "ppl-support.perplexity", 9.81, 9.5),
             status_gate("registered", require_validated=False),
             status_gate("failed", require_validated=True)]
    assert failure_message(gates) == ("gate failed: ppl-support.perplexity 9.81 > max 9.5; "
                                      "not validated (status: failed)")
