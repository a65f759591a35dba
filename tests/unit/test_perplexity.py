"""Perplexity math (registry.clientside.worker.suites.nll_from_logits) against a hand
computation: exp(total NLL / predicted tokens), logits at i predicting token i + 1."""

from __future__ import annotations

import math

import pytest
import torch

from registry.clientside.worker.suites import nll_from_logits


def hand_nll(logits: list[list[float]], ids: list[int]) -> tuple[float, int]:
    total = 0.0
    for position in range(len(ids) - 1):
        row = logits[position]
        log_z = math.log(sum(math.exp(v) for v in row))
        total -= row[ids[position + 1]] - log_z
    return total, len(ids) - 1


def test_matches_a_hand_computation():
    logits = [[0.1, 2.0, -1.0, 0.5], [1.5, -0.5, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0],
              [-2.0, 1.0, 4.0, 0.25]]
    ids = [1, 3, 0, 2]
    nll, count = nll_from_logits(torch.tensor([logits]), torch.tensor([ids]))
    expected, expected_count = hand_nll(logits, ids)
    assert count == expected_count == 3
    assert math.isclose(nll, expected, rel_tol=1e-6)
    # A second text: perplexity pools the NLL over every predicted token, not per text.
    logits2, ids2 = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]], [0, 3]
    nll2, count2 = nll_from_logits(torch.tensor([logits2]), torch.tensor([ids2]))
    ppl = math.exp((nll + nll2) / (count + count2))
    hand = math.exp((expected + hand_nll(logits2, ids2)[0]) / 4)
    assert ppl == pytest.approx(hand, rel=1e-6)


def test_uniform_logits_give_the_vocabulary_size():
    vocab, length = 7, 5
    nll, count = nll_from_logits(torch.zeros(1, length, vocab), torch.tensor([[1, 2, 3, 4, 5]]))
    assert count == length - 1
    assert math.exp(nll / count) == pytest.approx(vocab, rel=1e-6)


def test_extra_leading_positions_and_short_texts():
    # Prompt tuning prepends virtual tokens: only the last len(ids) positions count.
    logits = torch.randn(1, 6, 5)
    ids = torch.tensor([[0, 4, 2]])
    assert nll_from_logits(logits, ids) == nll_from_logits(logits[:, 3:], ids)
    assert nll_from_logits(torch.randn(1, 1, 5), torch.tensor([[3]])) == (0.0, 0)
    half = nll_from_logits(torch.randn(1, 3, 5, dtype=torch.bfloat16), torch.tensor([[0, 1, 2]]))
    assert math.isfinite(half[0]) and half[1] == 2  # computed in float32 whatever the model's dtype
