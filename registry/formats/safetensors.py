"""Static validation of safetensors headers: parse the manifest without reading tensor data."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from registry.errors import InvalidSafetensors, TooLarge

# Bits per element of every dtype the safetensors library (0.8) accepts. Sub-byte dtypes (F4, F6_*)
# are packed: a tensor is valid only if its total bit count ends on a byte boundary.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# Bytes per element of the byte-addressable dtypes; packed sub-byte ones are only in DTYPE_BITS.
DTYPE_SIZES: dict[str, int] = {k: v // 8 for k, v in DTYPE_BITS.items() if v % 8 == 0}

HEADER_LENGTH_BYTES = 8
METADATA_KEY = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})

ReadAt = Callable[[int, int], bytes]
"""(offset, length) -> the bytes at that offset; may return fewer at end of file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors manifest: its dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (sub-byte dtypes rounded up)."""
        return (self.numel * DTYPE_BITS[self.dtype] + 7) // 8

    def to_json(self) -> dict[str, Any]:
        """Return `{"dtype": ..., "shape": [...]}`."""
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorInfo:
        """Build from the `to_json` form.

        Args:
            d: A mapping with "dtype" (str) and "shape" (list of non-negative ints).

        Returns:
            The TensorInfo.

        Raises:
            ValueError: `d` is not in the `to_json` form.
        """
        dtype = d.get("dtype") if isinstance(d, dict) else None
        shape = d.get("shape") if isinstance(d, dict) else None
        if not isinstance(dtype, str) or not _is_shape(shape):
            raise ValueError(f"not a tensor description: {d!r}")
        return cls(dtype=dtype, shape=tuple(shape))


def _is_int(v: object) -> TypeGuard[int]:
    # bool is an int subclass; a JSON `true` is never a valid size.
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(v: object) -> TypeGuard[list[int]]:
    return isinstance(v, list) and all(_is_int(d) and d >= 0 for d in v)


def _reject_constant(token: str) -> Any:
    # NaN/Infinity are not JSON; Python's parser would accept them silently.
    raise ValueError(f"non-standard JSON constant {token}")


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys make the header ambiguous (which entry wins depends on the reader).
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_exact(read_at: ReadAt, offset: int, length: int) -> bytes:
    data = read_at(offset, length)
    return data if len(data) <= length else data[:length]


@dataclass(frozen=True)
class ParsedHeader:
    """A validated safetensors header: its tensors and the length of its JSON (what the size
    limit applies to). It depends only on the file's bytes, so it may be kept with a blob."""

    tensors: dict[str, TensorInfo]
    header_bytes: int


def parse_header(
    read_at: ReadAt, *, file_size: int, max_header_bytes: int, name: str = "file"
) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header: ``read_header(...).tensors``."""
    return read_header(read_at, file_size=file_size, max_header_bytes=max_header_bytes,
                       name=name).tensors


def check_header_size(header_bytes: int, *, max_header_bytes: int, name: str) -> None:
    """Raises TooLarge when a header is longer than the limit."""
    if header_bytes > max_header_bytes:
        raise TooLarge(
            f"{name}: safetensors header is {header_bytes} bytes; "
            f"the limit is {max_header_bytes} bytes"
        )


def read_header(
    read_at: ReadAt, *, file_size: int, max_header_bytes: int, name: str = "file"
) -> ParsedHeader:
    """Parse and validate a safetensors header without reading tensor data.

    Mirrors the checks of the safetensors library (tensors must tile the data section exactly,
    with no overlap, hole or trailing byte) and is stricter where the library is lenient:
    duplicate JSON keys and unknown keys in a tensor entry are refused.

    Args:
        read_at: Reads `length` bytes at `offset` of the file.
        file_size: Total size of the file in bytes.
        max_header_bytes: Largest accepted JSON header.
        name: File name used in error messages.

    Returns:
        Tensor name -> TensorInfo, ordered by name (`__metadata__` is not included), and the
        header's length.

    Raises:
        TooLarge: The declared header length exceeds `max_header_bytes`.
        InvalidSafetensors: The file is truncated or its header is malformed or inconsistent.
    """
    if file_size < HEADER_LENGTH_BYTES:
        raise InvalidSafetensors(
            f"{name}: truncated: {file_size} bytes, shorter than the 8-byte header length"
        )
    prefix = _read_exact(read_at, 0, HEADER_LENGTH_BYTES)
    if len(prefix) < HEADER_LENGTH_BYTES:
        raise InvalidSafetensors(f"{name}: truncated: could not read the 8-byte header length")
    header_len = int.from_bytes(prefix, "little")
    check_header_size(header_len, max_header_bytes=max_header_bytes, name=name)
    if HEADER_LENGTH_BYTES + header_len > file_size:
        raise InvalidSafetensors(
            f"{name}: header length {header_len} larger than the file ({file_size} bytes)"
        )
    raw = _read_exact(read_at, HEADER_LENGTH_BYTES, header_len)
    if len(raw) < header_len:
        raise InvalidSafetensors(f"{name}: truncated: read {len(raw)} of {header_len} header bytes")
    header = _decode_header(raw, name)
    data_len = file_size - HEADER_LENGTH_BYTES - header_len

    metadata = header.pop(METADATA_KEY, None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidSafetensors(f"{name}: __metadata__ must be an object of string to string")

    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, TensorInfo] = {}
    for tensor_name in sorted(header):
        info, begin, end = _parse_entry(tensor_name, header[tensor_name], name)
        if end > data_len:
            raise InvalidSafetensors(
                f"{name}: tensor {tensor_name!r} is truncated or out of range: data_offsets "
                f"[{begin}, {end}] but the data section has {data_len} bytes"
            )
        spans.append((begin, end, tensor_name))
        tensors[tensor_name] = info
    _check_coverage(spans, data_len, name)
    return ParsedHeader(tensors, header_len)


def _decode_header(raw: bytes, name: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSafetensors(f"{name}: header is not valid UTF-8 ({exc.reason})") from None
    try:
        header = json.loads(
            text, object_pairs_hook=_pairs_no_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        raise InvalidSafetensors(f"{name}: header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidSafetensors(
            f"{name}: header must be a JSON object, got {type(header).__name__}"
        )
    return header


def _parse_entry(tensor_name: str, entry: object, name: str) -> tuple[TensorInfo, int, int]:
    where = f"{name}: tensor {tensor_name!r}"
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise InvalidSafetensors(
            f"{where}: entry must be an object with exactly dtype, shape, data_offsets; got {got}"
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidSafetensors(f"{where}: unknown dtype {dtype!r}")
    shape = entry["shape"]
    if not _is_shape(shape):
        raise InvalidSafetensors(
            f"{where}: shape must be a list of non-negative ints, got {shape!r}"
        )
    offsets = entry["data_offsets"]
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(v) for v in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise InvalidSafetensors(
            f"{where}: data_offsets must be [begin, end] ints with 0 <= begin <= end, "
            f"got {offsets!r}"
        )
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise InvalidSafetensors(
            f"{where}: shape {shape} of packed dtype {dtype} does not end on a byte boundary"
        )
    if end - begin != bits // 8:
        raise InvalidSafetensors(
            f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes but shape "
            f"{shape} of {dtype} needs {bits // 8}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape)), begin, end


def _check_coverage(spans: list[tuple[int, int, str]], data_len: int, name: str) -> None:
    # Like safetensors' MetadataIncompleteBuffer: the tensors must tile the data section exactly,
    # so no byte can hide outside the manifest.
    spans.sort()
    pos = 0
    prev = ""
    for begin, end, tensor_name in spans:
        if begin < pos:
            raise InvalidSafetensors(
                f"{name}: tensors {prev!r} and {tensor_name!r} overlap "
                f"({tensor_name!r} begins at {begin}, before {prev!r} ends at {pos})"
            )
        if begin > pos:
            raise InvalidSafetensors(
                f"{name}: data bytes [{pos}, {begin}) are not covered by any tensor "
                f"(hole before {tensor_name!r})"
            )
        pos = end
        prev = tensor_name
    if pos != data_len:
        raise InvalidSafetensors(
            f"{name}: data section has {data_len - pos} trailing bytes after the last tensor "
            f"(tensors cover {pos} of {data_len} bytes)"
        )
