"""Metric names, values and directions (registry.evals.metrics)."""

from __future__ import annotations

import pytest

from registry.errors import InvalidInput
from registry.evals.metrics import check_metric, check_suite_name, lower_is_better, split_name


@pytest.mark.parametrize("metric", ["perplexity", "perplexity_base", "eval_loss", "latency_ms",
                                    "p50_latency", "wer", "peak_memory_bytes", "nll"])
def test_lower_is_better(metric):
    assert lower_is_better(metric)


@pytest.mark.parametrize("metric", ["accuracy", "pass_rate", "f1", "bleu", "acc,none",
                                    "exact_match", "max_abs_delta", "applied_tensors"])
def test_higher_is_better(metric):
    assert not lower_is_better(metric)


def test_values_must_be_finite_numbers():
    assert check_metric("acc", "0.5") == 0.5 and check_metric("acc", 3) == 3.0
    for bad in ("nan", "inf", "-Infinity", "abc", True, None, [1]):
        with pytest.raises(InvalidInput):
            check_metric("acc", bad)


def test_names():
    assert split_name("ppl-support.perplexity") == ("ppl-support", "perplexity")
    assert split_name("lm.acc,none") == ("lm", "acc,none")
    for bad in ("noperiod", "Upper.metric", ".metric", "suite."):
        with pytest.raises(InvalidInput):
            split_name(bad)
    with pytest.raises(InvalidInput):
        check_suite_name("has.dot")
