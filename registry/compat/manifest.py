"""A base model as the compatibility rules see it: config summary, weight manifest, fingerprint."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from registry.formats.safetensors import TensorInfo

FINGERPRINT_PREFIX = "sha256:"

# config.json keys of the same quantity across architectures, in lookup order.
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_VOCAB_KEYS = ("vocab_size",)

# transformers <5 wrote config.json as a diff against PretrainedConfig's defaults, whose
# tie_word_embeddings was True, so a config without the key was saved from a tied model.
# transformers 5 has no base default (each model's config class declares its own: Llama False,
# GPT-2 and BERT True) and always writes the key; modelling code reads a missing one as False.
TIE_WORD_EMBEDDINGS_DEFAULT = True


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def shape_fingerprint(tensors: Mapping[str, TensorInfo]) -> str:
    """Fingerprint of a weight manifest's names and shapes, independent of dtype and order.

    The digest covers the canonical JSON (no spaces) of the name-sorted list of
    `[name, [dim, ...]]` pairs, so a bf16 and an fp16 copy of one model fingerprint the same.

    Args:
        tensors: Tensor name -> TensorInfo.

    Returns:
        "sha256:" followed by 64 hex digits.
    """
    pairs = [[name, list(tensors[name].shape)] for name in sorted(tensors)]
    canonical = json.dumps(pairs, separators=(",", ":"), ensure_ascii=True)
    return FINGERPRINT_PREFIX + hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class BaseManifest:
    """A base model as the compatibility rules see it: config summary plus full weight manifest.

    `tensors` names are as saved in the checkpoint (for a sharded checkpoint, the union of its
    shards). `fingerprint` is computed from `tensors` when left empty and verified when given.
    """

    architectures: list[str]
    model_type: str | None
    hidden_size: int | None
    vocab_size: int | None
    num_hidden_layers: int | None
    tie_word_embeddings: bool | None
    tensors: dict[str, TensorInfo] = field(repr=False)
    revision: str | None = None
    fingerprint: str = ""

    def __post_init__(self) -> None:
        computed = shape_fingerprint(self.tensors)
        if not self.fingerprint:
            # frozen: the computed default has to bypass __setattr__.
            object.__setattr__(self, "fingerprint", computed)
        elif self.fingerprint != computed:
            raise ValueError(
                f"fingerprint {self.fingerprint!r} does not match the tensor manifest ({computed})"
            )

    # Computed once per manifest (compat keeps a base's manifest per process, and every
    # push checks against it): a 7B base has ~300 tensors to walk.
    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, by name."""
        return {n: tuple(i.shape) for n, i in self.tensors.items()}

    @functools.cached_property
    def owners(self) -> frozenset[str]:
        """Every module that owns a tensor (a tensor's name without its last part)."""
        return frozenset(n.rpartition(".")[0] for n in self.tensors)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form; tensors sorted by name."""
        return {
            "architectures": list(self.architectures),
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": self.num_hidden_layers,
            "tie_word_embeddings": self.tie_word_embeddings,
            "tensors": {name: self.tensors[name].to_json() for name in sorted(self.tensors)},
            "revision": self.revision,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BaseManifest:
        """Rebuild from the `to_json` form.

        Args:
            d: A mapping as produced by `to_json`; "fingerprint" may be omitted.

        Returns:
            The BaseManifest.

        Raises:
            ValueError: A field has the wrong type, or the fingerprint does not match the tensors.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"not a base manifest: {type(d).__name__}")
        tensors = d.get("tensors")
        if not isinstance(tensors, Mapping):
            raise ValueError("base manifest: tensors must be an object of name to tensor info")
        architectures = d.get("architectures") or []
        if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
            raise ValueError("base manifest: architectures must be a list of strings")
        for key in ("model_type", "revision"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"base manifest: {key} must be a string or null")
        for key in ("hidden_size", "vocab_size", "num_hidden_layers"):
            if d.get(key) is not None and not _is_int(d[key]):
                raise ValueError(f"base manifest: {key} must be an integer or null")
        tie = d.get("tie_word_embeddings")
        if tie is not None and not isinstance(tie, bool):
            raise ValueError("base manifest: tie_word_embeddings must be a boolean or null")
        fingerprint = d.get("fingerprint") or ""
        if not isinstance(fingerprint, str):
            raise ValueError("base manifest: fingerprint must be a string")
        return cls(
            architectures=list(architectures),
            model_type=d.get("model_type"),
            hidden_size=d.get("hidden_size"),
            vocab_size=d.get("vocab_size"),
            num_hidden_layers=d.get("num_hidden_layers"),
            tie_word_embeddings=tie,
            tensors={str(n): TensorInfo.from_json(dict(v)) for n, v in tensors.items()},
            revision=d.get("revision"),
            fingerprint=fingerprint,
        )


def _first_int(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if _is_int(value):
            return value
    return None


def config_summary(config_json: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a transformers config.json that the compatibility rules use.

    Sizes fall back across naming conventions: hidden_size / n_embd (GPT-2) / d_model (T5,
    BART); num_hidden_layers / n_layer / num_layers; and, for composite (e.g. vision-language)
    configs that keep them in `text_config`, that sub-config. A missing tie_word_embeddings
    reads as True (TIE_WORD_EMBEDDINGS_DEFAULT explains why); a value of the wrong type as None.

    Args:
        config_json: The parsed config.json.

    Returns:
        {"architectures", "model_type", "hidden_size", "vocab_size", "num_hidden_layers",
        "tie_word_embeddings"}; unknown sizes are None.
    """
    text = config_json.get("text_config")
    sub: Mapping[str, Any] = text if isinstance(text, Mapping) else {}

    def size(keys: tuple[str, ...]) -> int | None:
        found = _first_int(config_json, keys)
        return found if found is not None else _first_int(sub, keys)

    architectures = config_json.get("architectures")
    if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        architectures = []
    model_type = config_json.get("model_type")
    tie = config_json.get("tie_word_embeddings", sub.get("tie_word_embeddings"))
    if tie is None:
        tie = TIE_WORD_EMBEDDINGS_DEFAULT
    return {
        "architectures": list(architectures),
        "model_type": model_type if isinstance(model_type, str) else None,
        "hidden_size": size(_HIDDEN_KEYS),
        "vocab_size": size(_VOCAB_KEYS),
        "num_hidden_layers": size(_LAYER_KEYS),
        "tie_word_embeddings": tie if isinstance(tie, bool) else None,
    }


def base_manifest(
    config_json: Mapping[str, Any],
    tensors: Mapping[str, TensorInfo],
    *,
    revision: str | None = None,
) -> BaseManifest:
    """Build a BaseManifest from a base model's config.json and its safetensors headers.

    Args:
        config_json: The parsed config.json.
        tensors: Tensor name -> TensorInfo over every weight file of the checkpoint.
        revision: The base model's revision (commit or tag), when known.

    Returns:
        The BaseManifest, with its shape fingerprint computed.
    """
    return BaseManifest(**config_summary(config_json), tensors=dict(tensors), revision=revision)
