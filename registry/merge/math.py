"""PEFT's merge math per method: adapter tensors in, a weight delta or merged weight out.

Exactly as peft 0.21 merges (lora/layer.py, lora/dora.py, ia3/layer.py, loha/layer.py,
lokr/layer.py). Pure functions, no I/O; everything is float32 and casting to the output dtype is
the caller's job. `registry.merge.edits` applies them to a base checkpoint tensor by tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def transpose(weight: Tensor, fan_in_fan_out: bool) -> Tensor:
    """`weight.T` when `fan_in_fan_out` (Conv1D layout, [in, out]), else `weight`."""
    return weight.T if fan_in_fan_out else weight


def lora_scale(*, alpha: float, r: int, use_rslora: bool = False) -> float:
    """LoRA's scaling: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.

    Args:
        alpha: lora_alpha (after alpha_pattern).
        r: The rank (after rank_pattern).
        use_rslora: The config's use_rslora.

    Returns:
        The scale applied to `B @ A`.
    """
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def lora_delta(a: Tensor, b: Tensor, *, scale: float, fan_in_fan_out: bool = False) -> Tensor:
    """LoRA's weight delta `scale * (B @ A)`, in the base weight's layout.

    Args:
        a: lora_A weight, [r, in].
        b: lora_B weight, [out, r].
        scale: From `lora_scale`.
        fan_in_fan_out: The base weight is stored [in, out] (GPT-2 Conv1D).

    Returns:
        [out, in], or [in, out] with fan_in_fan_out.
    """
    return transpose(b @ a, fan_in_fan_out) * scale


def lora_embedding_delta(a: Tensor, b: Tensor, *, scale: float) -> Tensor:
    """Embedding LoRA's delta `scale * (B @ A).T`.

    Args:
        a: lora_embedding_A, [r, num_embeddings].
        b: lora_embedding_B, [embedding_dim, r].
        scale: From `lora_scale`.

    Returns:
        [num_embeddings, embedding_dim], the embedding weight's layout.
    """
    return (b @ a).T * scale


def dora_merge(
    weight: Tensor,
    a: Tensor,
    b: Tensor,
    magnitude: Tensor,
    *,
    scale: float,
    fan_in_fan_out: bool = False,
) -> Tensor:
    """DoRA: `(m / ||W + dW||_row) * (W + dW)`, the norm taken per output feature.

    As peft's DoraLinearVariant.merge: the norm is over the [out, in] view of `W + dW` and is a
    constant (peft detaches it), so only the magnitude direction is rescaled.

    Args:
        weight: The base weight (float32), [out, in] or [in, out] with fan_in_fan_out.
        a: lora_A weight, [r, in].
        b: lora_B weight, [out, r].
        magnitude: lora_magnitude_vector, [out].
        scale: From `lora_scale`.
        fan_in_fan_out: The base weight is stored [in, out].

    Returns:
        The merged weight, in the base weight's layout.
    """
    delta = lora_delta(a, b, scale=scale, fan_in_fan_out=fan_in_fan_out)
    norm = torch.linalg.norm(transpose(weight, fan_in_fan_out) + transpose(delta, fan_in_fan_out),
                             dim=1)
    factor = transpose((magnitude.reshape(-1) / norm).view(-1, 1), fan_in_fan_out)
    return factor * (weight + delta)


def dora_embedding_merge(
    weight: Tensor, a: Tensor, b: Tensor, magnitude: Tensor, *, scale: float
) -> Tensor:
    """DoRA on an embedding: the norm is per embedding dimension (peft's DoraEmbeddingVariant).

    Args:
        weight: The embedding weight (float32), [num_embeddings, embedding_dim].
        a: lora_embedding_A, [r, num_embeddings].
        b: lora_embedding_B, [embedding_dim, r].
        magnitude: lora_magnitude_vector, [embedding_dim].
        scale: From `lora_scale`.

    Returns:
        The merged weight.
    """
    delta = lora_embedding_delta(a, b, scale=scale)
    norm = torch.linalg.norm(weight.T + delta.T, dim=1)
    return (magnitude.reshape(-1) / norm).view(1, -1) * (weight + delta)


def ia3_merge(weight: Tensor, ia3_l: Tensor, *, fan_in_fan_out: bool = False) -> Tensor:
    """IA3 on a weight: scale input columns (feedforward, `l` is [1, in]) or output rows ([out, 1]).

    Args:
        weight: The base weight (float32), [out, in] or [in, out] with fan_in_fan_out.
        ia3_l: The learned vector as saved: [1, in] for feedforward modules, else [out, 1].
        fan_in_fan_out: The base weight is stored [in, out].

    Returns:
        The scaled weight.
    """
    return weight * transpose(ia3_l, fan_in_fan_out)


def ia3_merge_bias(bias: Tensor, ia3_l: Tensor) -> Tensor:
    """IA3 on the bias of a non-feedforward module: `bias * l` (feedforward biases are unchanged).

    Args:
        bias: The base bias (float32), [out].
        ia3_l: The learned vector, [out, 1].

    Returns:
        The scaled bias.
    """
    return bias * ia3_l.reshape(bias.shape)


def loha_delta(
    w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, *, scale: float, shape: Sequence[int]
) -> Tensor:
    """LoHa's delta: `((W1a @ W1b) * (W2a @ W2b)) * alpha / r`, reshaped to the base weight.

    Args:
        w1a: hada_w1_a, [out, r].
        w1b: hada_w1_b, [r, in].
        w2a: hada_w2_a, [out, r].
        w2b: hada_w2_b, [r, in].
        scale: alpha / r.
        shape: The base weight's shape.

    Returns:
        The delta, shaped like the base weight.
    """
    return (((w1a @ w1b) * (w2a @ w2b)) * scale).reshape(tuple(shape))


def lokr_delta(w1: Tensor, w2: Tensor, *, scale: float, shape: Sequence[int]) -> Tensor:
    """LoKr's delta: `kron(W1, W2) * alpha / r`, reshaped to the base weight.

    Args:
        w1: lokr_w1, or lokr_w1_a @ lokr_w1_b.
        w2: lokr_w2, or lokr_w2_a @ lokr_w2_b.
        scale: alpha / r.
        shape: The base weight's shape.

    Returns:
        The delta, shaped like the base weight.
    """
    return (torch.kron(w1, w2.contiguous()) * scale).reshape(tuple(shape))


def lokr_rows(w1: Tensor, w2: Tensor, scale: float, start: int, stop: int) -> Tensor:
    """Rows [start, stop) of `lokr_delta` for a 2-D base weight, without the whole product.

    Row i of kron(w1, w2) is w1[i // b] (x) w2[i % b]; only the w1 rows the block needs are used.
    """
    b = w2.shape[0]
    first, last = start // b, (stop - 1) // b + 1
    rows = torch.kron(w1[first:last], w2.contiguous()) * scale
    return rows[start - first * b : stop - first * b]
