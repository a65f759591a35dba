"""parse_header: agreement with the safetensors library, and every rejection with its message."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from registry.errors import InvalidSafetensors, TooLarge
from registry.formats.safetensors import DTYPE_BITS, DTYPE_SIZES, TensorInfo, parse_header

LIMIT = 1 << 20


def build(header: object, data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    """A safetensors file from a header object (or raw header bytes) and a data section."""
    head = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def parse(blob: bytes, *, limit: int = LIMIT, name: str = "w.safetensors") -> dict:
    return parse_header(
        lambda off, n: blob[off : off + n], file_size=len(blob), max_header_bytes=limit, name=name
    )


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def library_error(blob: bytes, tmp_path: Path) -> str | None:
    """The safetensors library's own refusal of a file (its message), None if it loads.

    Only the library's SafetensorError counts: anything else (an OSError writing the probe, a
    bug in this helper) is not the library saying no, and propagates.
    """
    path = tmp_path / "probe.safetensors"
    path.write_bytes(blob)
    try:
        with safe_open(path, framework="pt") as f:
            list(f.keys())
    except SafetensorError as exc:
        return str(exc)
    return None


# --- agreement with the library ------------------------------------------------------------

ROUND_TRIP_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    # Unsigned widths: a wrong element size for U16/U32/U64 shows only with these.
    torch.uint16,
    torch.uint32,
    torch.uint64,
]


@pytest.mark.parametrize("dtype", ROUND_TRIP_DTYPES, ids=str)
def test_round_trip_single_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.zeros(3, 5).to(dtype), "y": torch.zeros(7).to(dtype)}, str(path))
    assert_agrees_with_library(path)


def test_round_trip_mixed_dtypes_metadata_scalars_and_empty(tmp_path: Path) -> None:
    tensors = {
        "a.bf16": torch.randn(4, 8).to(torch.bfloat16),
        "b.f32": torch.randn(3),
        "c.i64": torch.arange(5),
        "d.scalar": torch.tensor(1.5),
        "e.empty": torch.zeros(0, 4),
        "f.u8": torch.zeros(2, 3, 4, dtype=torch.uint8),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "hi"})
    parsed = assert_agrees_with_library(path)
    assert parsed["d.scalar"] == TensorInfo("F32", ())
    assert parsed["e.empty"] == TensorInfo("F32", (0, 4))
    assert parsed["a.bf16"] == TensorInfo("BF16", (4, 8))
    assert "__metadata__" not in parsed


def assert_agrees_with_library(path: Path) -> dict[str, TensorInfo]:
    blob = path.read_bytes()
    parsed = parse(blob)
    with safe_open(path, framework="pt") as f:
        expected = {
            k: TensorInfo(f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
            for k in f.keys()  # noqa: SIM118 (safe_open is not a dict)
        }
    assert parsed == expected
    assert list(parsed) == sorted(parsed)
    return parsed


def test_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(256, 256)}, str(path))
    blob = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    reads: list[tuple[int, int]] = []

    def read_at(off: int, n: int) -> bytes:
        reads.append((off, n))
        return blob[off : off + n]

    parse_header(read_at, file_size=len(blob), max_header_bytes=LIMIT)
    assert max(off + n for off, n in reads) <= header_end
    assert sum(n for _, n in reads) == header_end


def test_library_dtypes_are_all_known() -> None:
    # The dtype list of safetensors 0.8, as its header parser reports it.
    library = [
        *("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0"),
        *("F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32"),
        *("C64", "F64", "I64", "U64"),
    ]
    assert set(DTYPE_BITS) == set(library)
    assert DTYPE_SIZES["BF16"] == 2 and DTYPE_SIZES["F8_E4M3"] == 1 and DTYPE_SIZES["C64"] == 8
    assert "F4" not in DTYPE_SIZES


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes"),
    [("F4", [4], 2), ("F6_E2M3", [4], 3), ("F8_E8M0", [3], 3), ("C64", [2], 16)],
)
def test_unusual_dtypes_accepted_like_the_library(
    tmp_path: Path, dtype: str, shape: list, nbytes: int
) -> None:
    blob = build({"t": entry(dtype, shape, 0, nbytes)}, b"\0" * nbytes)
    assert parse(blob) == {"t": TensorInfo(dtype, tuple(shape))}
    assert library_error(blob, tmp_path) is None


def test_tensor_info_json_round_trip() -> None:
    info = TensorInfo("BF16", (4, 8))
    assert info.to_json() == {"dtype": "BF16", "shape": [4, 8]}
    assert TensorInfo.from_json(info.to_json()) == info
    assert TensorInfo.from_json({"dtype": "F32", "shape": []}) == TensorInfo("F32", ())
    with pytest.raises(ValueError):
        TensorInfo.from_json({"dtype": "F32", "shape": [-1]})


def test_zero_tensors_and_empty_data_is_valid() -> None:
    assert parse(build({"__metadata__": {"format": "pt"}})) == {}


def test_leading_whitespace_and_padding_accepted() -> None:
    body = json.dumps({"t": entry("F32", [2], 0, 8)}).encode()
    assert parse(build(None, b"\0" * 8, raw=b" " + body + b"    ")) == {
        "t": TensorInfo("F32", (2,))
    }


# --- rejections ------------------------------------------------------------------------------

OK_ENTRY = entry("F32", [2], 0, 8)

# (id, file bytes, expected message fragment); the library must reject each of these too.
INVALID_FILES = [
    ("truncated-length", b"\x10\x00\x00", "truncated"),
    ("header-longer-than-file", struct.pack("<Q", 500) + b"{}", "header length 500 larger than"),
    ("not-utf8", build(None, raw=b'{"\xff": 1}'), "not valid UTF-8"),
    ("not-json", build(None, raw=b"{not json"), "not valid JSON"),
    ("not-object", build(None, raw=b"[1, 2]"), "must be a JSON object"),
    ("metadata-not-str", build({"__metadata__": {"k": 1}}), "__metadata__"),
    ("metadata-list", build({"__metadata__": ["x"]}), "__metadata__"),
    ("entry-not-object", build({"t": [1, 2]}), "exactly dtype, shape, data_offsets"),
    ("entry-missing-offsets", build({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "exactly"),
    ("unknown-dtype", build({"t": entry("F128", [2], 0, 8)}, b"\0" * 8), "unknown dtype 'F128'"),
    ("dtype-not-str", build({"t": entry(4, [2], 0, 8)}, b"\0" * 8), "unknown dtype 4"),
    ("negative-dim", build({"t": entry("F32", [-2], 0, 8)}, b"\0" * 8), "non-negative ints"),
    ("float-dim", build({"t": entry("F32", [2.0], 0, 8)}, b"\0" * 8), "non-negative ints"),
    ("shape-not-list", build({"t": entry("F32", 2, 0, 8)}, b"\0" * 8), "non-negative ints"),
    (
        "offsets-reversed",
        build({"t": entry("F32", [0], 8, 0)}, b"\0" * 8),
        "0 <= begin <= end",
    ),
    (
        "offsets-three",
        build({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
        "[begin, end]",
    ),
    (
        "size-mismatch",
        build({"t": entry("F32", [3], 0, 8)}, b"\0" * 8),
        "span 8 bytes but shape [3] of F32 needs 12",
    ),
    ("out-of-range", build({"t": OK_ENTRY}, b"\0" * 4), "truncated or out of range"),
    (
        "overlap",
        build({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12),
        "tensors 'a' and 'b' overlap",
    ),
    (
        # One byte of overlap in a 1-byte dtype: an off-by-one in the overlap check lets it by.
        "overlap-u8-one-byte",
        build({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 1, 3)}, b"\0" * 3),
        "tensors 'a' and 'b' overlap",
    ),
    (
        "hole",
        build({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12),
        "data bytes [4, 8) are not covered",
    ),
    ("hole-at-start", build({"a": entry("F32", [1], 4, 8)}, b"\0" * 8), "bytes [0, 4)"),
    ("trailing-bytes", build({"t": OK_ENTRY}, b"\0" * 12), "4 trailing bytes"),
    ("data-without-tensors", build({}, b"\0" * 4), "4 trailing bytes"),
    ("f4-odd", build({"t": entry("F4", [3], 0, 2)}, b"\0" * 2), "byte boundary"),
]


# What the safetensors library (0.8) says about each of INVALID_FILES: it must refuse the file
# for the same reason, not for another one (a probe that broke some other way would pass too).
LIBRARY_ERRORS = {
    "truncated-length": "header too small",
    "header-longer-than-file": "invalid header length",
    "not-utf8": "invalid UTF-8 in header",
    "not-json": "invalid JSON in header",
    "not-object": "expected struct HashMetadata",
    "metadata-not-str": "invalid type: integer `1`, expected a string",
    "metadata-list": "invalid type: sequence, expected a map",
    "entry-not-object": "expected string or map",
    "entry-missing-offsets": "missing field `data_offsets`",
    "unknown-dtype": "unknown variant `F128`",
    "dtype-not-str": "invalid type: integer `4`",
    "negative-dim": "invalid value: integer `-2`, expected usize",
    "float-dim": "invalid type: floating point `2.0`, expected usize",
    "shape-not-list": "invalid type: integer `2`, expected a sequence",
    "offsets-reversed": "invalid offset for tensor `t`",
    "offsets-three": "invalid length 3, expected 2 elements",
    "size-mismatch": "invalid shape, data type, or offset for tensor",
    "out-of-range": "incomplete metadata, file not fully covered",
    "overlap": "invalid offset for tensor `b`",
    "overlap-u8-one-byte": "invalid offset for tensor `b`",
    "hole": "invalid offset for tensor `b`",
    "hole-at-start": "invalid offset for tensor `a`",
    "trailing-bytes": "incomplete metadata, file not fully covered",
    "data-without-tensors": "incomplete metadata, file not fully covered",
    "f4-odd": "does not end up at a byte boundary",
}


@pytest.mark.parametrize(
    ("case", "blob", "fragment"), INVALID_FILES, ids=[c[0] for c in INVALID_FILES]
)
def test_invalid_file_rejected(tmp_path: Path, case: str, blob: bytes, fragment: str) -> None:
    with pytest.raises(InvalidSafetensors) as exc:
        parse(blob, name="adapter_model.safetensors")
    assert fragment in str(exc.value)
    assert str(exc.value).startswith("adapter_model.safetensors: ")
    error = library_error(blob, tmp_path)
    assert error is not None, "the safetensors library accepts this file"
    assert LIBRARY_ERRORS[case] in error, error


def test_every_invalid_file_has_the_librarys_reason() -> None:
    assert set(LIBRARY_ERRORS) == {c[0] for c in INVALID_FILES}


def test_overlap_message_names_both_tensors_whatever_the_order() -> None:
    blob = build({"zeta": entry("F32", [2], 0, 8), "alpha": entry("F32", [1], 4, 8)}, b"\0" * 8)
    with pytest.raises(InvalidSafetensors, match=r"'zeta' and 'alpha' overlap"):
        parse(blob)


def test_zero_size_tensor_inside_another_is_an_overlap() -> None:
    blob = build({"a": entry("F32", [2], 0, 8), "z": entry("F32", [0], 4, 4)}, b"\0" * 8)
    with pytest.raises(InvalidSafetensors, match=r"overlap"):
        parse(blob)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "t": {}}', "duplicate"),
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}', "exactly"),
        (b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', "NaN"),
        (b'{"t": {"dtype": "F32", "shape": [true], "data_offsets": [0, 8]}}', "non-negative"),
    ],
    ids=["duplicate-key", "extra-entry-key", "nan", "bool-dim"],
)
def test_stricter_than_library(raw: bytes, fragment: str) -> None:
    # Ambiguous or sloppy headers the library tolerates; a registry has no reason to.
    with pytest.raises(InvalidSafetensors, match=fragment):
        parse(build(None, b"\0" * 8, raw=raw))


def test_header_over_limit_is_too_large() -> None:
    blob = build({"t": OK_ENTRY}, b"\0" * 8)
    header_len = struct.unpack("<Q", blob[:8])[0]
    with pytest.raises(TooLarge, match=f"limit is {header_len - 1} bytes"):
        parse(blob, limit=header_len - 1)
    assert parse(blob, limit=header_len)


def test_huge_declared_header_is_too_large_before_any_read() -> None:
    blob = struct.pack("<Q", 2**63) + b"{}"
    with pytest.raises(TooLarge):
        parse(blob)


def test_short_read_is_truncation() -> None:
    blob = build({"t": OK_ENTRY}, b"\0" * 8)

    def short_read(off: int, n: int) -> bytes:
        return blob[off : off + n][:-1] if off else blob[off : off + n]

    with pytest.raises(InvalidSafetensors, match=r"truncated"):
        parse_header(short_read, file_size=len(blob), max_header_bytes=LIMIT)


def test_declared_file_size_shorter_than_8() -> None:
    with pytest.raises(InvalidSafetensors, match=r"w: truncated: 5 bytes"):
        parse_header(lambda o, n: b"\0" * n, file_size=5, max_header_bytes=LIMIT, name="w")
