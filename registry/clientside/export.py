"""Run a merged export on this machine, against any RegistryBackend (HTTP or embedded).

The merge needs torch, so it runs where the CLI runs (a worker, a laptop), never inside the API
server: the registry provides the adapter and base files and records the result.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.backend import RegistryBackend
from registry.base_models.schemas import BaseModelOut
from registry.base_models.sources import HfRef, S3Ref, parse_remote
from registry.clientside.staging import staged_dir
from registry.clientside.transfer import ProgressFactory, progress_bar, resolve, upload_missing
from registry.config import Settings
from registry.db.enums import SourceKind
from registry.errors import DigestMismatch, IncompatibleBase, InvalidInput, SourceUnavailable
from registry.exports.schemas import (
    ANONYMOUS,
    DTYPES,
    EMBEDDED,
    JOB_PREFIX,
    CreateExportIn,
    ExportOut,
)
from registry.formats import check_paths, parse_adapter_config
from registry.storage import make_s3_client
from registry.storage.sink import HashingFileSink

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class ExportResult:
    out: Path
    files: list[dict[str, Any]]
    dtype: str
    reused: bool = False
    export: ExportOut | None = None
    merged_modules: int | None = None
    shards: int | None = None
    uploaded: list[str] = field(default_factory=list)
    # Why the reused export was trusted (None when nothing was reused).
    trusted_because: str | None = None
    # Provenances of recorded exports of the same triple that were not reused: not trusted.
    untrusted: list[str] = field(default_factory=list)

    def reused_json(self) -> dict[str, Any] | None:
        """Which recorded export was reused, for ``--json``."""
        if not self.reused or self.export is None:
            return None
        e = self.export
        return {"provenance": e.provenance, "created_by": e.created_by,
                "created_at": e.created_at.isoformat(), "trusted_because": self.trusted_because}


def trusted_because(export: ExportOut, own: str | None) -> str | None:
    """Why this caller may reuse ``export`` without merging again, or None if it may not.

    Trusted: an export produced by a registry export job, or one recorded with this caller's
    own provenance (the same token; the embedded registry's own records). Never an anonymous
    upload: without authentication "anonymous" is anyone, so anyone could have planted it.

    Args:
        export: A recorded export.
        own: The provenance the registry records for this caller (`export_provenance`).
    """
    if export.provenance.startswith(JOB_PREFIX):
        return "produced by a registry export job"
    if own is not None and own != ANONYMOUS and export.provenance == own:
        if own == EMBEDDED:
            return "recorded by this embedded registry"
        return "uploaded by you"
    return None


def _download(backend: RegistryBackend, digest: str, dest: Path) -> Path:
    with dest.open("wb", buffering=0) as out, contextlib.closing(HashingFileSink(out)) as sink:
        backend.download_blob(digest, sink)  # type: ignore[arg-type]
        got = sink.digest()
    if got != digest:
        dest.unlink(missing_ok=True)
        raise DigestMismatch(f"downloaded {dest.name} does not match {digest}")
    return dest


class StoredBaseFiles:
    """A base uploaded to the registry: headers by range reads, shards one at a time."""

    def __init__(self, backend: RegistryBackend, base: BaseModelOut, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp
        self.files = {f.path: f for f in base.files}

    def list_files(self) -> list[str]:
        return sorted(self.files)

    def size(self, path: str) -> int:
        return self.files[path].size

    def read(self, path: str, offset: int, length: int) -> bytes:
        return self.backend.read_blob_range(str(self.files[path].digest), offset, length)

    @contextlib.contextmanager
    def local_path(self, path: str) -> Iterator[Path]:
        digest = str(self.files[path].digest)
        local = self.backend.local_blob_path(digest)
        if local is not None:  # the embedded store's own file: no copy
            yield local
            return
        dest = _download(self.backend, digest, self.tmp / f"base-{Path(path).name}")
        try:
            yield dest
        finally:
            dest.unlink(missing_ok=True)


class HfBaseFiles:
    """A base referenced on the Hugging Face Hub: files come through the HF cache."""

    def __init__(self, base: BaseModelOut, ref: HfRef, settings: Settings) -> None:
        self.base, self.ref, self.settings = base, ref, settings

    def list_files(self) -> list[str]:
        return sorted(f.path for f in self.base.files)

    @contextlib.contextmanager
    def local_path(self, path: str) -> Iterator[Path]:
        from huggingface_hub import hf_hub_download  # on first use: only hf:// bases need it

        try:
            local = hf_hub_download(self.ref.repo_id, path, revision=self.base.revision,
                                    cache_dir=self.settings.hf_cache_dir,
                                    local_files_only=self.settings.hf_offline)
        except Exception as exc:  # network, auth or cache miss: the source is unavailable
            raise SourceUnavailable(
                f"cannot fetch {path} of {self.base.source}: {type(exc).__name__}: {exc}"
            ) from None
        yield Path(str(local))


class S3BaseFiles:
    """A base referenced in S3: headers by ranged GETs, shards downloaded one at a time."""

    def __init__(self, base: BaseModelOut, ref: S3Ref, tmp: Path) -> None:
        self.base, self.ref, self.tmp = base, ref, tmp
        self.client = make_s3_client()
        self.sizes = {f.path: f.size for f in base.files}

    def _key(self, path: str) -> str:
        return f"{self.ref.prefix}/{path}" if self.ref.prefix else path

    def list_files(self) -> list[str]:
        return sorted(self.sizes)

    def size(self, path: str) -> int:
        return self.sizes[path]

    def read(self, path: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self.client.get_object(Bucket=self.ref.bucket, Key=self._key(path),
                                          Range=f"bytes={offset}-{offset + length - 1}")
        return bytes(response["Body"].read())

    @contextlib.contextmanager
    def local_path(self, path: str) -> Iterator[Path]:
        dest = self.tmp / f"base-{Path(path).name}"
        self.client.download_file(self.ref.bucket, self._key(path), str(dest))
        try:
            yield dest
        finally:
            dest.unlink(missing_ok=True)


def base_files(backend: RegistryBackend, base: BaseModelOut, settings: Settings,
               tmp: Path) -> Any:
    if base.source_kind == SourceKind.file:
        return StoredBaseFiles(backend, base, tmp)
    ref = parse_remote(base.source)
    if isinstance(ref, HfRef):
        return HfBaseFiles(base, ref, settings)
    return S3BaseFiles(base, ref, tmp)


def _check_out(out: Path, *, force: bool) -> None:
    from registry.merge.stream import check_out_dir  # registry.merge imports torch (~1 s)

    check_out_dir(out, force=force, hint="--force")


def pull_export(backend: RegistryBackend, export: ExportOut, out: Path, *, force: bool,
                progress: ProgressFactory | None) -> list[dict[str, Any]]:
    """Download a recorded export into ``out``: the path set checked first (a server's answer
    is untrusted), every file verified, installed only when complete (`staged_dir`)."""
    check_paths([f.path for f in export.files])
    with staged_dir(out, force=force, hint="--force") as staging:
        for f in export.files:
            dest = staging / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            with progress_bar(progress, f"pull {f.path}", f.size):
                _download(backend, f.digest, dest)
    return [{"path": f.path, "digest": f.digest, "size": f.size} for f in export.files]


def export(
    backend: RegistryBackend,
    *,
    ref: str,
    base: str,
    out: Path,
    settings: Settings,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    device: str = "cpu",
    upload: bool = False,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> ExportResult:
    """Merge ``ref`` into ``base`` and write an HF-loadable checkpoint to ``out``.

    The pair must be statically compatible (the stored verdict's reasons are the error). A
    recorded export of the same (version, base, dtype) is downloaded instead of merged again
    only if its provenance is trusted (`trusted_because`); others are listed in the result's
    ``untrusted`` and ignored. With ``upload`` the new one is uploaded and recorded under this
    caller's provenance.

    Raises:
        Unmergeable (IncompatibleBase, QuantizedBase, …), OutputExists, NotFound subclasses,
        InvalidInput.
    """
    from registry.merge.stream import merge_to_dir  # registry.merge imports torch (~1 s)

    if dtype is not None and dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    _check_out(out, force=force)
    version = resolve(backend, ref)
    base_out = backend.get_base(base)
    verdict = backend.compat_verdict(version.name, version.version, base=base_out.name,
                                     base_revision=base_out.revision)
    if not verdict.compatible:
        reasons = "; ".join(r.message for r in verdict.reasons[:5])
        raise IncompatibleBase(
            f"{version.ref} is not compatible with {base_out.name}@{base_out.revision}: {reasons}"
        )
    # "The base's dtype" is what its config declares; merge_to_dir then casts every float
    # tensor to it, so the recorded dtype is exactly the one looked up here.
    declared = base_out.config.get("torch_dtype") or base_out.config.get("dtype")
    if dtype is None and declared in DTYPES:
        dtype = str(declared)
    out_dtype = dtype or "mixed"
    recorded = backend.list_exports(version.name, version.version, base=base_out.name,
                                    base_revision=base_out.revision, dtype=out_dtype)
    own = backend.export_provenance()
    untrusted = [e.provenance for e in recorded if trusted_because(e, own) is None]
    for candidate in recorded:
        why = trusted_because(candidate, own)
        if why is not None:  # merged once already, by someone we trust: download it
            files = pull_export(backend, candidate, out, force=force, progress=progress)
            return ExportResult(out=out, files=files, dtype=out_dtype, reused=True,
                                export=candidate, trusted_because=why, untrusted=untrusted)

    adapter_files = {f.path: f.digest for f in version.files}
    with tempfile.TemporaryDirectory(prefix="adapter-registry-export-") as tmp_name:
        tmp = Path(tmp_name)
        config_path = _download(backend, adapter_files[ADAPTER_CONFIG], tmp / ADAPTER_CONFIG)
        weights = _download(backend, adapter_files[ADAPTER_WEIGHTS], tmp / ADAPTER_WEIGHTS)
        config = parse_adapter_config(config_path.read_bytes())
        bar = _MergeProgress(progress, f"merge {version.ref}")
        try:
            result = merge_to_dir(
                base=base_files(backend, base_out, settings, tmp), adapter_config=config,
                adapter_weights=weights, out_dir=out, dtype=dtype,
                max_shard_bytes=max_shard_bytes, device=device, progress=bar, force=force,
            )
        finally:
            bar.close()
    files = [{"path": f.path, "digest": f.digest, "size": f.size} for f in result.files]
    outcome = ExportResult(out=out, files=files, dtype=result.dtype,
                           merged_modules=result.merged_modules, shards=result.shards,
                           untrusted=untrusted)
    if upload:
        digests = {f["path"]: f["digest"] for f in files}
        outcome.uploaded, _ = upload_missing(backend, out, digests, progress)
        outcome.export, _ = backend.create_export(CreateExportIn(
            name=version.name, version=version.version, base=base_out.name,
            base_revision=base_out.revision, dtype=result.dtype, files=digests,
        ))
    return outcome


class _MergeProgress:
    """Adapts merge_to_dir's (done, total) callback to a progress bar opened on first call."""

    def __init__(self, factory: ProgressFactory | None, desc: str) -> None:
        self.factory, self.desc = factory, desc
        self.done = 0
        self._update: Callable[[int], None] | None = None
        self._close: Callable[[], None] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.factory is None:
            return
        if self._update is None:
            self._update, self._close = self.factory(self.desc, total)
        self._update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self._close is not None:
            self._close()
