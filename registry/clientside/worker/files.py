"""The worker's disk cache of base-model files, keyed by content, least recently used first out.

One directory per base checkpoint (``bases/<key>/``, the files under their own paths so
transformers loads it as a local checkpoint), where the key is a hash of what makes the
weights the same: the file digests of an uploaded base, the pinned commit of an ``hf://`` one,
the ETags of an ``s3://`` one. A ``.complete`` marker is written last (a directory without
one is a fetch that died, removed on sight) and touched on every use: its mtime orders
eviction. The cap counts bytes on disk; links to files that already exist locally (the
embedded store's blobs, the Hugging Face cache) count nothing. A lock file per base keeps
two workers sharing the directory from fetching or evicting one base at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from registry.backend import RegistryBackend
from registry.base_models.schemas import BaseModelOut
from registry.base_models.sources import HfRef, parse_remote
from registry.config import Settings
from registry.db.enums import SourceKind
from registry.errors import RegistryError
from registry.formats import normalize_path
from registry.storage import make_s3_client
from registry.storage.sink import HashingFileSink

MARKER = ".complete"


class BaseUnavailable(Exception):
    """A base model's files could not be fetched (the job fails with this; the worker goes on)."""


def base_key(base: BaseModelOut) -> str:
    """What identifies a base's weights, hashed: equal keys share one cache directory."""
    parts = [base.source_kind, base.source if base.source_kind != SourceKind.file else "",
             base.revision if base.source_kind == SourceKind.hf else ""]
    parts += [f"{f.path}\0{f.digest or ''}\0{f.etag or ''}\0{f.size}" for f in base.files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def disk_bytes(path: Path) -> int:
    """Bytes of regular files under ``path`` (links count nothing: their data live elsewhere)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


@dataclass
class Fetched:
    path: Path
    hit: bool  # every file was in the cache already
    seconds: float


class BaseFileCache:
    """Base checkpoints on local disk, at most ``cap_bytes`` of them (0: keep only the last)."""

    def __init__(self, root: Path, *, cap_bytes: int) -> None:
        self.root = root
        self.bases = root / "bases"
        self.cap_bytes = cap_bytes
        self.bases.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _lock(self, key: str, *, blocking: bool = True) -> Iterator[bool]:
        with open(self.bases / f".{key}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def entries(self) -> list[tuple[float, Path]]:
        """Complete cached bases, least recently used first."""
        out = []
        for d in self.bases.iterdir():
            marker = d / MARKER
            if d.is_dir() and marker.exists():
                out.append((marker.stat().st_mtime, d))
        return sorted(out)

    def used_bytes(self) -> int:
        return sum(disk_bytes(d) for _, d in self.entries())

    def evict(self, *, keep: set[str]) -> list[str]:
        """Remove least recently used bases until the cache fits its cap (``keep`` stays)."""
        removed = []
        entries = self.entries()
        total = sum(disk_bytes(d) for _, d in entries)
        for _, d in entries:
            if total <= self.cap_bytes:
                break
            if d.name in keep:
                continue
            with self._lock(d.name, blocking=False) as locked:
                if not locked:
                    continue  # another worker is fetching or using it now
                size = disk_bytes(d)
                shutil.rmtree(d, ignore_errors=True)
                total -= size
                removed.append(d.name)
        return removed

    def fetch(self, backend: RegistryBackend, base: BaseModelOut, settings: Settings) -> Fetched:
        """The base's files in a local directory, fetched unless cached.

        Raises:
            BaseUnavailable: a file could not be fetched or did not match its digest.
        """
        start = time.perf_counter()
        key = base_key(base)
        target = self.bases / key
        with self._lock(key):
            marker = target / MARKER
            if marker.exists():
                os.utime(marker)
                return Fetched(target, True, time.perf_counter() - start)
            shutil.rmtree(target, ignore_errors=True)  # a fetch that died half-way
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.bases))
            try:
                _fetch_files(backend, base, settings, staging)
                marker_data = {"name": base.name, "revision": base.revision,
                               "source": base.source}
                (staging / MARKER).write_text(json.dumps(marker_data))
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        self.evict(keep={key})
        return Fetched(target, False, time.perf_counter() - start)


def _fetch_files(backend: RegistryBackend, base: BaseModelOut, settings: Settings,
                 into: Path) -> None:
    what = f"{base.name}@{base.revision} ({base.source})"
    for f in base.files:
        rel = normalize_path(f.path)  # a path from the server never leaves the directory
        dest = into / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if base.source_kind == SourceKind.file:
                _fetch_blob(backend, str(f.digest), dest)
            else:
                _fetch_remote(base, rel, dest, settings)
        except BaseUnavailable:
            raise
        except (RegistryError, OSError) as exc:
            detail = exc.detail if isinstance(exc, RegistryError) else str(exc)
            raise BaseUnavailable(f"cannot fetch {rel} of base model {what}: {detail}") from None
        except Exception as exc:  # boto3, huggingface_hub: any failure means "unavailable"
            raise BaseUnavailable(f"cannot fetch {rel} of base model {what}: "
                                  f"{type(exc).__name__}: {exc}") from None


def download_verified(backend: RegistryBackend, digest: str, dest: Path) -> None:
    """Download a blob to ``dest``, renamed into place only once its sha256 matches."""
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with (tmp.open("wb", buffering=0) as out,
              contextlib.closing(HashingFileSink(out)) as sink):
            backend.download_blob(digest, cast(BinaryIO, sink))
            got = sink.digest()
        if got != digest:
            raise BaseUnavailable(f"{dest.name}: downloaded content hashes to {got}, "
                                  f"expected {digest}")
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_blob(backend: RegistryBackend, digest: str, dest: Path) -> None:
    local = backend.local_blob_path(digest)
    if local is not None:  # the embedded store's own file: a link, no copy
        os.symlink(local, dest)
        return
    download_verified(backend, digest, dest)


def _fetch_remote(base: BaseModelOut, rel: str, dest: Path, settings: Settings) -> None:
    ref = parse_remote(base.source)
    if isinstance(ref, HfRef):
        from huggingface_hub import hf_hub_download  # on first use: only hf:// bases need it

        local = hf_hub_download(ref.repo_id, rel, revision=base.revision,
                                cache_dir=settings.hf_cache_dir,
                                local_files_only=settings.hf_offline)
        os.symlink(Path(str(local)).resolve(), dest)
        return
    key = f"{ref.prefix}/{rel}" if ref.prefix else rel
    make_s3_client().download_file(ref.bucket, key, str(dest))
