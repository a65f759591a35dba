"""Streaming merged export: fold an adapter into a base checkpoint tensor by tensor, to a new dir.

This module is the entry point; `files` reads the base checkpoint, `edits` turns the adapter
into a MergePlan (per-tensor edits) with the math of `math`, `layout` checks everything and lays
out the output shards (an ExportPlan) before anything is written, and `writer` streams the
shards out.

Memory: the base is never loaded as a model. All safetensors headers are read first (they are
small), which lets the exporter check the adapter against every base shape before writing
anything, lay out the output shards, and write each output shard's header before its data. Then
the base shards are opened one at a time and memory-mapped; each range is dropped from the
process's RSS (madvise DONTNEED) as soon as it is used, so the mapping never holds more than a
block. Tensors the adapter does not touch are copied in 8 MiB chunks by the kernel
(copy_file_range, as `cp` does; a plain write where the filesystem cannot), hashed from the
mapping. Touched tensors are merged in blocks of rows of about 4 MiB of float32 (the whole
tensor only for the few edits whose rows are not independent: DoRA on Conv1D or embeddings),
converted once to the output dtype into pooled buffers. One thread writes and another hashes
(sha256) while the main thread merges the next block. Peak memory is therefore a few blocks,
or the largest non-row-wise tensor, plus the adapter, whatever the model's size or shard count.

Atomicity: everything is written to a hidden temporary directory next to `out_dir`, which is
renamed into place only when complete; on any error (or an exception from `progress`) it is
removed. Files are not fsync'ed: the recorded sha256 digests let a consumer verify them.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from registry.errors import OutputExists
from registry.formats.peft import AdapterConfig
from registry.merge.edits import check_mergeable
from registry.merge.files import BaseFiles, LocalDirFiles, RangeReadable
from registry.merge.layout import check_args, plan_export
from registry.merge.writer import (
    ExportedFile,
    Sources,
    Writer,
    compute_threads,
    copy_files,
    write_index,
    write_shards,
)

# BaseFiles and friends moved to files.py and ExportedFile to writer.py; callers import them here.
__all__ = [
    "BaseFiles",
    "ExportedFile",
    "LocalDirFiles",
    "MergeResult",
    "RangeReadable",
    "check_out_dir",
    "merge_to_dir",
]


@dataclass(frozen=True)
class MergeResult:
    """What merge_to_dir wrote.

    `dtype` is the output dtype of the floating weights ("mixed" if they keep several dtypes);
    `merged_modules` counts base modules the adapter changed (modules_to_save included).
    """

    files: list[ExportedFile]
    merged_modules: int
    dtype: str
    shards: int


def check_out_dir(out_dir: Path, *, force: bool, hint: str = "force=True") -> None:
    """Refuse an output path that is not a directory, or a non-empty one unless ``force``."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputExists(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExists(f"{out_dir} exists and is not empty; pass {hint} to replace it")


def merge_to_dir(
    *,
    base: BaseFiles,
    adapter_config: AdapterConfig,
    adapter_weights: Path,
    out_dir: Path,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> MergeResult:
    """Merge an adapter into a base checkpoint, streaming, into a new HF-format directory.

    Every check runs before anything is written. The output has the base's tensors (same
    names, in the base's order) with the adapter folded in, as `model.safetensors` or
    `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, plus every other
    base file (config, tokenizer, generation config, ...) except weight files of any format.

    Args:
        base: Where the base checkpoint's files come from.
        adapter_config: The adapter's parsed adapter_config.json.
        adapter_weights: The adapter's adapter_model.safetensors (loaded whole: it is small).
        out_dir: The directory to create; must not exist or be empty (see `force`).
        dtype: "float32", "float16", "bfloat16" for every floating tensor, or None to keep
            each base tensor's dtype. Merges compute in float32 and cast once.
        max_shard_bytes: Largest output shard (a single larger tensor gets its own shard).
        device: "cpu" or "cuda" (merge arithmetic on the GPU).
        progress: Called as progress(bytes_done, bytes_total) after each tensor; an exception
            it raises aborts the export, leaving nothing behind.
        force: Replace a non-empty `out_dir`.

    Returns:
        The files written (with sha256 and size), modules merged, output dtype, shard count.

    Raises:
        InvalidInput: A bad dtype, device, or max_shard_bytes.
        OutputExists: `out_dir` is not empty and `force` is False.
        Unmergeable: Prompt learning or another method or layer merged export cannot fold.
        QuantizedBase: The base is quantized (quantization_config, or integer/fp8/fp4 weights
            where the adapter applies).
        IncompatibleBase: Modules missing from the base or shapes that do not fit.
        InvalidBaseModel: No safetensors weights (pickle only), or a malformed checkpoint.
    """
    dev = check_args(dtype, device, max_shard_bytes)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force=force)
    check_mergeable(adapter_config)
    export_plan = plan_export(
        base, adapter_config, adapter_weights, dtype=dtype, max_shard_bytes=max_shard_bytes,
        dev=dev,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    writer = Writer()
    sources = Sources(base, writer.drain)
    try:
        with compute_threads(dev), _gc_frozen():
            write_shards(export_plan.shards, export_plan.merge, sources, writer, tmp, dev,
                         progress)
        sources.close()
        write_index(export_plan.shards, writer, tmp)
        copy_files(base, export_plan.copied, writer, tmp, export_plan.config,
                   export_plan.new_config)
        exported = writer.finish()
        _move_into_place(tmp, out_dir, force)
    except BaseException as exc:
        writer.abort()
        sources.close(drain=False)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.filename is None:
            # A write through a descriptor (a full disk, a quota) names no file: say which
            # export failed, so the one-line error is not just "[Errno 28] No space left".
            raise OSError(exc.errno, f"export failed: {exc.strerror or exc}", str(out_dir)) from exc
        raise
    return MergeResult(
        files=sorted(exported, key=lambda f: f.path),
        merged_modules=len(export_plan.merge.modules),
        dtype=export_plan.dtype,
        shards=len(export_plan.shards),
    )


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Keep the garbage collector off the objects that exist before the merge loop.

    The loop creates a few small objects per block, which triggers collections, and a full
    collection walks every object torch and the registry hold (a few % of an export's CPU
    time in a profile). Frozen objects are skipped; the loop's own garbage is still collected.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _move_into_place(tmp: Path, out_dir: Path, force: bool) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise OutputExists(f"{out_dir} was filled while the export ran")
        trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        out_dir.rename(trash)
        tmp.rename(out_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    if out_dir.is_dir():
        out_dir.rmdir()
    tmp.rename(out_dir)
