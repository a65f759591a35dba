"""Metric names and directions (pure): which way is better for a metric, and why.

A metric's direction comes from its name: the words below mark lower-is-better metrics
(perplexity, losses, error rates, latencies, sizes, dropped tensors,
non-finite outputs); every other metric (accuracy, pass rate,
F1, BLEU, …) is higher-is-better. Promotion gates (``--no-regression``) and score comparisons
read the direction here, so there is one rule.
"""

from __future__ import annotations

import math
import re

from registry.errors import InvalidInput

SUITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
METRIC_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:/-]{0,99}$")

LOWER_IS_BETTER_WORDS: tuple[str, ...] = (
    "perplexity", "ppl", "loss", "nll", "error", "wer", "cer", "latency", "time", "seconds",
    "ms", "bytes", "memory", "mem", "dropped", "nonfinite",
)
_WORD = re.compile(r"[a-z]+")


def lower_is_better(metric: str) -> bool:
    """True when a smaller value of ``metric`` is better (see the module docstring)."""
    words = set(_WORD.findall(metric.lower()))
    return any(w in words for w in LOWER_IS_BETTER_WORDS)


def check_suite_name(name: str) -> str:
    """A suite name: lowercase letters, digits, ``_`` and ``-`` (no ``.``: ``SUITE.METRIC``
    splits at the first dot).

    Raises:
        InvalidInput: otherwise.
    """
    if not isinstance(name, str) or not SUITE_RE.match(name):
        raise InvalidInput(
            f"invalid suite name {str(name)[:80]!r}: use lowercase letters, digits, '_' and '-' "
            "(no '.'), starting with a letter or digit, at most 100 characters"
        )
    return name


def check_metric(metric: str, value: object) -> float:
    """A metric name and its value as a finite float.

    Raises:
        InvalidInput: a malformed name, a non-numeric value, NaN or infinity.
    """
    if not isinstance(metric, str) or not METRIC_RE.match(metric):
        raise InvalidInput(
            f"invalid metric name {str(metric)[:80]!r}: letters, digits and _ . , : / - "
            "(at most 100 characters)"
        )
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"metric {metric}: value must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"metric {metric}: value must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInput(f"metric {metric}: value must be finite, got {value!r}")
    return number


def split_name(full: str) -> tuple[str, str]:
    """``SUITE.METRIC`` -> (suite, metric).

    Raises:
        InvalidInput: no dot, or a malformed part.
    """
    suite, dot, metric = full.partition(".")
    if not dot:
        raise InvalidInput(f"expected SUITE.METRIC, got {full[:80]!r}")
    check_suite_name(suite)
    check_metric(metric, 0.0)
    return suite, metric
