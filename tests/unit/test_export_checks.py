"""check_export_files: what a recorded export may hold, from its headers alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from registry.errors import InvalidExport
from registry.exports.checks import check_export_files
from registry.formats import TensorInfo

BASE_TENSORS = {
    "model.embed_tokens.weight": TensorInfo("F32", (16, 8)),
    "model.layers.0.self_attn.q_proj.weight": TensorInfo("F32", (8, 8)),
    "model.norm.weight": TensorInfo("F32", (8,)),
    "model.rotary.inv_freq": TensorInfo("I64", (4,)),
}
TIED = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True}


class Files:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def size(self, path: str) -> int:
        return len(self.files[path])

    def read(self, path: str, offset: int, length: int) -> bytes:
        return self.files[path][offset : offset + length]


def _tensors(dtype: torch.dtype = torch.float32, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": torch.zeros(16, 8, dtype=dtype),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8, dtype=dtype),
        "model.norm.weight": torch.zeros(8, dtype=dtype),
        "model.rotary.inv_freq": torch.zeros(4, dtype=torch.int64),
    }
    return {**out, **extra}


def check(files: dict[str, bytes], dtype: str = "float32",
          base_config: dict | None = None) -> None:
    check_export_files(sorted(files), Files(files), base_tensors=BASE_TENSORS,
                       base_config=base_config or TIED, dtype=dtype,
                       max_header_bytes=1 << 20, max_config_bytes=1 << 20)


def export_files(tensors: dict[str, torch.Tensor], **config: object) -> dict[str, bytes]:
    return {"config.json": json.dumps({**TIED, **config}).encode(),
            "model.safetensors": save(tensors), "tokenizer.json": b"{}"}


def test_the_shape_of_a_merge_is_accepted() -> None:
    check(export_files(_tensors()))
    # Cast to bfloat16: floating tensors in BF16, the integer buffer unchanged.
    check(export_files(_tensors(torch.bfloat16)), dtype="bfloat16")
    # A merge into a tied output head unties it and writes lm_head.weight.
    check(export_files(_tensors(**{"lm_head.weight": torch.zeros(16, 8)}),
                       tie_word_embeddings=False))


@pytest.mark.parametrize(("files", "dtype", "fragment"), [
    (export_files(_tensors(**{"lm_head.weight": torch.zeros(16, 8)})), "float32",
     "'lm_head.weight' is not a tensor of the base"),  # still tied: nothing to add
    (export_files(_tensors(**{"lm_head.weight": torch.zeros(9, 8)}), tie_word_embeddings=False),
     "float32", "'lm_head.weight' is not a tensor of the base"),
    (export_files(_tensors(torch.bfloat16)), "float32", "is BF16; a float32 export"),
    (export_files({**_tensors(), "model.rotary.inv_freq": torch.zeros(4)}), "float32",
     "'model.rotary.inv_freq' is F32"),
    (export_files({k: v for k, v in _tensors().items() if k != "model.norm.weight"}), "float32",
     "lacks base tensor 'model.norm.weight'"),
    (export_files(_tensors(), architectures=["GPT2LMHeadModel"]), "float32", "architectures"),
    ({"model.safetensors": save(_tensors())}, "float32", "no config.json"),
])
def test_what_a_merge_cannot_produce_is_refused(files: dict[str, bytes], dtype: str,
                                                fragment: str) -> None:
    with pytest.raises(InvalidExport) as exc:
        check(files, dtype=dtype)
    assert fragment in exc.value.detail


def test_mixed_keeps_every_base_dtype() -> None:
    check(export_files(_tensors()), dtype="mixed")
    with pytest.raises(InvalidExport, match="is BF16"):
        check(export_files(_tensors(torch.bfloat16)), dtype="mixed")
