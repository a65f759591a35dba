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


def test_a_right_padded_batch_counts_each_text_once():
    torch.manual_seed(0)
    lengths = [5, 2, 4]
    width, vocab = max(lengths), 7
    logits = torch.randn(len(lengths), width, vocab)
    ids = torch.randint(0, vocab, (len(lengths), width))
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    nll, count = nll_from_logits(logits, ids, mask)
    alone = [nll_from_logits(logits[i:i + 1, :n], ids[i:i + 1, :n])
             for i, n in enumerate(lengths)]
    assert count == sum(c for _, c in alone) == sum(n - 1 for n in lengths)
    assert math.isclose(nll, sum(v for v, _ in alone), rel_tol=1e-6)


@pytest.mark.parametrize("make", ["llama", "gpt2"])
@torch.no_grad()
def test_a_batch_through_a_real_model_scores_as_its_texts_one_by_one(make):
    """Padding after a text (with its attention mask) changes nothing the text's own tokens
    see: the batched suite scores what one forward pass per text scored."""
    from registry.clientside.worker.suites import _batch_nll
    from tests.peft_factory import tiny_gpt2, tiny_llama

    model = (tiny_llama() if make == "llama" else tiny_gpt2()).eval()
    torch.manual_seed(1)
    texts = [torch.randint(0, 50, (n,)) for n in (9, 3, 1, 6)]
    nll, count = _batch_nll(model, texts, torch.device("cpu"))
    alone = [_batch_nll(model, [t], torch.device("cpu")) for t in texts]
    assert count == sum(c for _, c in alone) == 8 + 2 + 0 + 5
    assert math.isclose(nll, sum(v for v, _ in alone), rel_tol=1e-5)
