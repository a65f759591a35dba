"""inspect_adapter on real peft adapters, path rules, limits, and local directory access."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from registry.errors import (
    InvalidAdapter,
    InvalidAdapterConfig,
    InvalidPath,
    InvalidSafetensors,
    TensorMismatch,
    TooLarge,
    UnsafeFormat,
)
from registry.formats.adapter import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterInspection,
    Limits,
    LocalDirAccess,
    check_paths,
    inspect_adapter,
    list_local_files,
    normalize_path,
)
from tests.peft_factory import ADAPTER_KINDS, make_adapter

LIMITS = Limits(
    max_file_bytes=50 * 1024 * 1024,
    max_files=64,
    max_config_bytes=64 * 1024,
    max_header_bytes=1024 * 1024,
)


class MemoryFiles:
    """FileAccess over an in-memory dict."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def size(self, path: str) -> int:
        return len(self.files[path])

    def read(self, path: str, offset: int, length: int) -> bytes:
        return self.files[path][offset : offset + length]


def inspect_dir(root: Path, *, limits: Limits = LIMITS) -> AdapterInspection:
    return inspect_adapter(list_local_files(root), LocalDirAccess(root), limits=limits)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        kind: make_adapter(root / kind, kind, base_model_name_or_path=f"org/{kind}-base")
        for kind in ADAPTER_KINDS
    }


@pytest.fixture
def copy_of(built: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def copy(kind: str) -> Path:
        return Path(shutil.copytree(built[kind], tmp_path / kind))

    return copy


def edit_config(root: Path, **changes: object) -> None:
    path = root / CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# --- real adapters ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_every_peft_adapter_kind_passes(built: dict[str, Path], kind: str) -> None:
    root = built[kind]
    result = inspect_dir(root)
    config = json.loads((root / CONFIG_FILE).read_text())
    summary = result.summary()
    assert summary["peft_type"] == config["peft_type"]
    assert summary["task_type"] == config["task_type"]
    assert summary["base_model_name_or_path"] == f"org/{kind}-base"
    assert summary["r"] == config.get("r")
    assert summary["lora_alpha"] == config.get("lora_alpha", config.get("alpha"))
    targets = config.get("target_modules")
    assert summary["target_modules"] == targets
    assert set(summary) == {
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "target_modules",
        "base_model_name_or_path",
    }
    json.dumps(summary)

    with safe_open(root / WEIGHTS_FILE, framework="pt") as f:
        expected = {
            k: {"dtype": f.get_slice(k).get_dtype(), "shape": f.get_slice(k).get_shape()}
            for k in f.keys()  # noqa: SIM118 (safe_open is not a dict)
        }
    assert result.manifest_json() == expected
    assert list(result.manifest_json()) == sorted(expected)


def test_expected_summaries(built: dict[str, Path]) -> None:
    lora = inspect_dir(built["lora"]).summary()
    assert (lora["peft_type"], lora["task_type"], lora["r"], lora["lora_alpha"]) == (
        "LORA",
        "CAUSAL_LM",
        4,
        8,
    )
    assert sorted(lora["target_modules"]) == ["q_proj", "v_proj"]
    assert inspect_dir(built["ia3"]).summary()["peft_type"] == "IA3"
    assert inspect_dir(built["loha"]).summary()["lora_alpha"] == 8
    prompt = inspect_dir(built["prompt_tuning"])
    assert prompt.summary()["target_modules"] is None
    assert prompt.manifest_json() == {"prompt_embeddings": {"dtype": "F32", "shape": [4, 32]}}
    assert inspect_dir(built["bert_lora"]).summary()["task_type"] == "SEQ_CLS"


def test_rank_pattern_adapter_has_pattern_ranks(built: dict[str, Path]) -> None:
    manifest = inspect_dir(built["lora_rank_pattern"]).manifest_json()
    layer = "base_model.model.model.layers"
    assert manifest[f"{layer}.0.self_attn.o_proj.lora_A.weight"]["shape"] == [2, 32]
    assert manifest[f"{layer}.1.self_attn.q_proj.lora_A.weight"]["shape"] == [8, 32]
    assert manifest[f"{layer}.0.self_attn.q_proj.lora_A.weight"]["shape"] == [4, 32]


def test_lora_b_of_other_rank_rejected(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    tensors = load_file(root / WEIGHTS_FILE)
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[name] = tensors[name][:, :2].contiguous()
    save_file(tensors, str(root / WEIGHTS_FILE))
    with pytest.raises(TensorMismatch) as exc:
        inspect_dir(root)
    assert "model.layers.1.self_attn.v_proj" in str(exc.value)
    assert "lora_A rank 4 (shape [4, 32]) does not match lora_B rank 2 (shape [16, 2])" in str(
        exc.value
    )


def test_both_factors_resized_rejected_against_r(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    tensors = load_file(root / WEIGHTS_FILE)
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors[f"{module}.lora_A.weight"] = tensors[f"{module}.lora_A.weight"][:3].contiguous()
    tensors[f"{module}.lora_B.weight"] = tensors[f"{module}.lora_B.weight"][:, :3].contiguous()
    save_file(tensors, str(root / WEIGHTS_FILE))
    with pytest.raises(TensorMismatch, match=r"has rank 3 .* but r=4 expects 4"):
        inspect_dir(root)


def test_rank_pattern_violation_rejected(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora_rank_pattern")
    edit_config(root, rank_pattern={"model.layers.1.self_attn.q_proj": 8, "o_proj": 3})
    with pytest.raises(TensorMismatch) as exc:
        inspect_dir(root)
    assert "o_proj' has rank 2" in str(exc.value)
    assert "rank_pattern['o_proj'] expects 3" in str(exc.value)


def test_rank_pattern_removed_rejected(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora_rank_pattern")
    edit_config(root, rank_pattern={})
    with pytest.raises(TensorMismatch, match=r"r=4 expects 4"):
        inspect_dir(root)


def test_renamed_tensor_rejected(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    tensors = load_file(root / WEIGHTS_FILE)
    old = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors["base_model.model.model.layers.0.self_attn.q_proj.adapter_down.weight"] = tensors.pop(
        old
    )
    save_file(tensors, str(root / WEIGHTS_FILE))
    with pytest.raises(TensorMismatch, match=r"adapter_down.weight' does not fit LORA"):
        inspect_dir(root)


def test_ia3_config_with_lora_tensors_rejected(
    built: dict[str, Path], copy_of: Callable[[str], Path]
) -> None:
    root = copy_of("lora")
    shutil.copy(built["ia3"] / CONFIG_FILE, root / CONFIG_FILE)
    with pytest.raises(TensorMismatch, match=r"is a LORA .* peft_type is IA3"):
        inspect_dir(root)


def test_dora_flag_removed_rejected(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("dora")
    edit_config(root, use_dora=False)
    with pytest.raises(TensorMismatch, match=r"DoRA magnitude vector but the config has use_dora"):
        inspect_dir(root)


def test_full_weight_outside_modules_to_save_rejected(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("bert_lora")
    edit_config(root, modules_to_save=None)
    with pytest.raises(TensorMismatch, match=r"'base_model.model.classifier.bias' does not fit"):
        inspect_dir(root)


# --- file-set rules --------------------------------------------------------------------------


def test_pickle_file_rejected_with_conversion_hint(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeFormat) as exc:
        inspect_dir(root)
    message = str(exc.value)
    assert message.startswith("adapter_model.bin is a pickle file; pickle weights are refused.")
    assert "torch.load('adapter_model.bin', weights_only=True)" in message
    assert "save_pretrained(..., safe_serialization=True)" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "name", ["training_args.BIN", "ckpt/optimizer.pt", "x.pth", "a.pkl", "b.pickle", "c.ckpt"]
)
def test_every_pickle_suffix_rejected(name: str) -> None:
    files = {CONFIG_FILE: b"{}", WEIGHTS_FILE: b"", name: b""}
    with pytest.raises(UnsafeFormat, match=r"pickle"):
        inspect_adapter(list(files), MemoryFiles(files), limits=LIMITS)


def test_missing_config(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / CONFIG_FILE).unlink()
    with pytest.raises(InvalidAdapterConfig, match=r"missing adapter_config.json"):
        inspect_dir(root)


def test_non_json_config(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / CONFIG_FILE).write_text("{'peft_type': 'LORA'}")
    with pytest.raises(InvalidAdapterConfig, match=r"adapter_config.json is not valid JSON"):
        inspect_dir(root)


def test_unknown_peft_type(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    edit_config(root, peft_type="MEGA_LORA")
    with pytest.raises(InvalidAdapterConfig, match=r"unknown peft_type 'MEGA_LORA'"):
        inspect_dir(root)


def test_missing_weights(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / WEIGHTS_FILE).unlink()
    with pytest.raises(InvalidAdapter, match=r"missing adapter_model.safetensors"):
        inspect_dir(root)


def test_weights_only_in_subdirectory_is_missing(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / "sub").mkdir()
    (root / WEIGHTS_FILE).rename(root / "sub" / WEIGHTS_FILE)
    with pytest.raises(InvalidAdapter, match=r"missing adapter_model.safetensors"):
        inspect_dir(root)


def test_corrupt_weights(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    data = (root / WEIGHTS_FILE).read_bytes()
    (root / WEIGHTS_FILE).write_bytes(data[:-3])
    with pytest.raises(InvalidSafetensors, match=r"adapter_model.safetensors: .*out of range"):
        inspect_dir(root)


def test_other_safetensors_files_are_validated(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / "extra").mkdir()
    (root / "extra" / "aux.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}x")
    with pytest.raises(InvalidSafetensors, match=r"extra/aux.safetensors: .*1 trailing bytes"):
        inspect_dir(root)


def test_too_many_files(built: dict[str, Path]) -> None:
    limits = Limits(
        max_file_bytes=LIMITS.max_file_bytes,
        max_files=2,
        max_config_bytes=LIMITS.max_config_bytes,
        max_header_bytes=LIMITS.max_header_bytes,
    )
    with pytest.raises(TooLarge, match=r"adapter has 3 files; the limit is 2"):
        inspect_dir(built["lora"], limits=limits)


def test_file_too_large(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("lora")
    (root / "README.md").unlink()
    size = (root / WEIGHTS_FILE).stat().st_size
    limits = Limits(
        max_file_bytes=size - 1,
        max_files=10,
        max_config_bytes=LIMITS.max_config_bytes,
        max_header_bytes=LIMITS.max_header_bytes,
    )
    with pytest.raises(TooLarge, match=f"adapter_model.safetensors is {size} bytes"):
        inspect_dir(root, limits=limits)


def test_config_too_large(built: dict[str, Path]) -> None:
    limits = Limits(
        max_file_bytes=LIMITS.max_file_bytes,
        max_files=10,
        max_config_bytes=10,
        max_header_bytes=LIMITS.max_header_bytes,
    )
    with pytest.raises(TooLarge, match=r"adapter_config.json is .* the limit is 10"):
        inspect_dir(built["lora"], limits=limits)


def test_header_too_large(built: dict[str, Path]) -> None:
    limits = Limits(
        max_file_bytes=LIMITS.max_file_bytes,
        max_files=10,
        max_config_bytes=LIMITS.max_config_bytes,
        max_header_bytes=16,
    )
    with pytest.raises(TooLarge, match=r"the limit is 16 bytes"):
        inspect_dir(built["lora"], limits=limits)


def test_check_order_count_before_paths_before_pickle() -> None:
    files = {"../x.bin": b"", CONFIG_FILE: b"{}"}
    few = Limits(max_file_bytes=1, max_files=1, max_config_bytes=1, max_header_bytes=1)
    with pytest.raises(TooLarge):
        inspect_adapter(list(files), MemoryFiles(files), limits=few)
    with pytest.raises(InvalidPath):
        inspect_adapter(list(files), MemoryFiles(files), limits=LIMITS)


def test_duplicate_paths() -> None:
    files = {CONFIG_FILE: b"{}"}
    with pytest.raises(InvalidPath, match=r"listed twice"):
        inspect_adapter([CONFIG_FILE, CONFIG_FILE], MemoryFiles(files), limits=LIMITS)


def test_in_memory_access_matches_local(built: dict[str, Path]) -> None:
    root = built["dora"]
    files = {p: (root / p).read_bytes() for p in list_local_files(root)}
    result = inspect_adapter(sorted(files), MemoryFiles(files), limits=LIMITS)
    assert result == inspect_dir(root)


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["adapter_config.json", "sub/dir/file.txt", ".hidden", "a..b", "with space.md", "é/ü.txt"],
)
def test_clean_paths_unchanged(path: str) -> None:
    assert normalize_path(path) is path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "empty file path"),
        ("/etc/passwd", "absolute"),
        ("C:/x", "absolute"),
        ("c:x", "absolute"),
        ("a\\b", "backslash"),
        ("../x", "'..' segment"),
        ("a/../b", "'..' segment"),
        ("./a", "'.' segment"),
        ("a/.", "'.' segment"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("a\x7fb", "control character"),
        ("x" * 1025, "the limit is 1024"),
        # Names a database accepts but no filesystem can hold, or that display as another name.
        ("x" * 256, "256-byte name"),
        ("sub/" + "é" * 128, "256-byte name"),
        ("a\x85b", "control character"),  # C1: NEL
        ("a\x9bb", "control character"),  # C1: CSI, starts terminal escape sequences
        ("model\u202egnp.safetensors", "bidirectional"),  # right-to-left override
        ("a\u202ab", "bidirectional"),
        ("a\u2066b", "bidirectional"),  # left-to-right isolate
        ("a\u2069b", "bidirectional"),
        ("a\u200eb", "bidirectional"),  # left-to-right mark
        ("a\u200fb", "bidirectional"),
        ("a\u061cb", "bidirectional"),  # Arabic letter mark
    ],
)
def test_bad_paths(path: str, fragment: str) -> None:
    with pytest.raises(InvalidPath) as exc:
        normalize_path(path)
    assert fragment in str(exc.value)
    assert not any(ch in str(exc.value) for ch in "\u202e\u202a\u2066\u2069\x85\x9b"), (
        "the message must show the character escaped, not let it act")


def test_path_at_length_limit_ok() -> None:
    # 1024 characters, no name over 255 bytes.
    path = "/".join(["x" * 255] * 3 + ["x" * 254, "x"])
    assert len(path) == 1024 and normalize_path(path) is path
    assert normalize_path("é" * 127 + "x") and normalize_path("x" * 255)


@pytest.mark.parametrize(
    ("paths", "fragment"),
    [
        (["x", "x/y"], "'x' is also a directory of 'x/y'"),
        (["a/b/c.txt", "a/b"], "'a/b' is also a directory of 'a/b/c.txt'"),
        (["README.md", "readme.md"], "differ only by case"),
        (["Tokenizer/x.json", "tokenizer/x.json"], "differ only by case"),
        (["X", "x/y"], "'X' is also a directory of 'x/y'"),  # collides on macOS too
        (["caf\u00e9.txt", "cafe\u0301.txt"], "Unicode normalization"),  # NFC vs NFD
        (["a.txt", "a.txt"], "listed twice"),
        (["ok.txt", "../x"], "'..' segment"),
    ],
)
def test_path_sets_that_cannot_be_checked_out(paths: list[str], fragment: str) -> None:
    with pytest.raises(InvalidPath) as exc:
        check_paths(paths)
    assert fragment in str(exc.value)


def test_path_sets_that_are_fine() -> None:
    check_paths(["x/y", "x/z", "xy", "x.y/z", "Sub/a.txt", "Sub/b.txt"])
    check_paths([])


def test_inspect_adapter_refuses_a_set_that_cannot_be_checked_out(built: dict[str, Path]) -> None:
    root = built["lora"]
    files = {p: (root / p).read_bytes() for p in list_local_files(root)}
    for extra in ({"notes": b"a", "notes/more": b"b"}, {"README": b"a", "readme": b"b"},
                  {"n" * 300: b"a"}):
        with pytest.raises(InvalidPath):
            inspect_adapter(sorted({**files, **extra}), MemoryFiles({**files, **extra}),
                            limits=LIMITS)


def test_list_local_files_nested_sorted_skipping_git(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "a.json").write_text("{}")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "sub" / ".git").mkdir()
    (tmp_path / "sub" / ".git" / "x").write_text("x")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "meta").write_text("m")
    (tmp_path / ".cache" / "other").write_text("kept")
    assert list_local_files(tmp_path) == [".cache/other", "b.txt", "sub/deep/a.json"]


def test_symlink_inside_root_listed_and_readable(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("hello")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    assert list_local_files(tmp_path) == ["link.txt", "real.txt"]
    assert LocalDirAccess(tmp_path).read("link.txt", 1, 3) == b"ell"


def test_symlink_outside_root_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("s")
    (root / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidPath, match=r"leak is a symlink pointing outside"):
        list_local_files(root)
    with pytest.raises(InvalidPath, match=r"resolves outside"):
        LocalDirAccess(root).size("leak")


def test_directory_symlink_and_broken_link_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "dlink").symlink_to(tmp_path / "d")
    with pytest.raises(InvalidPath, match=r"dlink is a symlink to a directory"):
        list_local_files(tmp_path)
    (tmp_path / "dlink").unlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidPath, match=r"dangling is a broken symlink"):
        list_local_files(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_fifo_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InvalidPath, match=r"pipe is not a regular file"):
        list_local_files(tmp_path)


def test_local_access_refuses_unclean_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidPath):
        LocalDirAccess(tmp_path).read("../x", 0, 1)
