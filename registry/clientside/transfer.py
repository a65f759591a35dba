"""Push a PEFT directory and pull a version back, over any RegistryBackend (HTTP or embedded)."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from registry.adapters.schemas import CreateVersionIn, VersionOut
from registry.backend import RegistryBackend
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn
from registry.base_models.sources import wanted
from registry.clientside.ci_env import detect_provenance
from registry.clientside.manifest import MANIFEST_NAME, holds, read_manifest, write_manifest
from registry.clientside.staging import staged_dir
from registry.config import Settings
from registry.errors import (
    BlobBusy,
    BlobNotFound,
    DigestMismatch,
    InvalidInput,
    InvalidReference,
    NotFound,
)
from registry.formats import (
    PICKLE_SUFFIXES,
    LocalDirAccess,
    check_paths,
    inspect_adapter,
    list_local_files,
)
from registry.formats.checkpoint import read_checkpoint
from registry.refs import parse_ref, validate_name
from registry.storage import sha256_file
from registry.storage.sink import HashingFileSink

# A progress factory: called with (description, total bytes), returns an updater and a closer.
ProgressFactory = Callable[[str, int], tuple[Callable[[int], None], Callable[[], None]]]


@contextlib.contextmanager
def progress_bar(factory: ProgressFactory | None, desc: str, total: int) -> Iterator[
    Callable[[int], None] | None
]:
    if factory is None:
        yield None
        return
    update, close = factory(desc, total)
    try:
        yield update
    finally:
        close()


@dataclass
class PushResult:
    version: VersionOut
    created: bool
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def push(
    backend: RegistryBackend,
    *,
    name: str,
    directory: Path,
    settings: Settings,
    base_model: str | None = None,
    parent: str | None = None,
    metadata: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    description: str | None = None,
    progress: ProgressFactory | None = None,
) -> PushResult:
    """Check a PEFT directory locally, upload missing blobs, and create the version.

    The static checks run here first so a push the server would reject uploads nothing; the
    server runs them again because clients can skip them.

    Raises:
        InvalidName, InvalidAdapter (and subclasses), InvalidInput, and whatever the backend
        raises for the final create.
    """
    validate_name(name)
    if parent is not None:
        ref = parse_ref(parent)
        if ref.alias is not None:  # lineage records the version the alias points at now
            found = backend.resolve_alias(ref.name, ref.alias)
            parent = f"{found.name}:{found.version}"
        elif ref.version is None:
            raise InvalidReference(f"--parent must be NAME:VERSION or NAME@ALIAS, got {parent!r}")
    if not directory.is_dir():
        raise InvalidInput(f"{directory} is not a directory")
    paths = list_local_files(directory)
    inspect_adapter(paths, LocalDirAccess(directory), limits=settings.adapter_limits())

    files, result_uploaded, result_skipped = upload_files(backend, directory, paths, progress)

    prov = detect_provenance()
    body = CreateVersionIn(
        files=files,
        base_model=base_model,
        parent=parent,
        metadata=metadata or {},
        idempotency_key=idempotency_key,
        git_commit=prov.git_commit,
        ci_run_url=prov.ci_run_url,
        created_by=prov.created_by,
        description=description,
    )
    version, created = with_reupload(
        lambda: backend.create_version(name, body), backend, directory, files, progress
    )
    return PushResult(version, created, result_uploaded, result_skipped)


T = TypeVar("T")


# A push retries its create this many times when gc took a blob it had uploaded or found.
REUPLOAD_ATTEMPTS = 8


def with_reupload(create: Callable[[], T], backend: RegistryBackend, directory: Path,
                  files: dict[str, str], progress: ProgressFactory | None) -> T:
    """Run ``create``; if a blob vanished since its upload or HEAD (gc removed it, being
    unreferenced, before the version referenced it), upload what is missing again and retry.

    With gc running continuously at ``--grace 0`` a retry can lose the race again, so it
    retries a few times, with a growing random pause; the server's own locking guarantees a
    created version is complete whatever happens in between.
    """
    for attempt in range(REUPLOAD_ATTEMPTS):
        try:
            return create()
        except (BlobNotFound, BlobBusy):
            if attempt == REUPLOAD_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0, 0.02 * 2**attempt))
            upload_missing(backend, directory, files, progress)
    raise AssertionError("unreachable")


# Files at least this large are sent without hashing them first when no stored blob has their
# size; smaller ones are hashed first, which costs less than the extra request.
UNHASHED_UPLOAD_MIN = 8 * 1024 * 1024


def upload_files(backend: RegistryBackend, directory: Path, paths: list[str],
                 progress: ProgressFactory | None) -> tuple[dict[str, str], list[str], list[str]]:
    """Find every file's digest and upload what the registry lacks.

    A large file whose size no stored blob has cannot be a duplicate: where the registry names
    blobs after their upload (local blob store), it is sent at once and hashed on the way out,
    one read instead of two. Every other file is hashed first and uploaded only when its
    digest is not stored yet (dedupe).

    Returns:
        ``path -> digest`` for every path, the paths uploaded, the paths already stored.
    """
    files: dict[str, str] = {}
    sent: list[str] = []
    for path in sorted(paths):
        local = directory / path
        size = local.stat().st_size
        if size >= UNHASHED_UPLOAD_MIN and backend.can_upload_unhashed(size):
            with progress_bar(progress, f"upload {path}", size) as update:
                files[path] = backend.upload_new_blob(local, progress=update,
                                                      pin_seconds=PIN_SECONDS)
            sent.append(path)
        else:
            files[path] = sha256_file(local)[0]
    rest = {path: digest for path, digest in files.items() if path not in sent}
    uploaded, skipped = upload_missing(backend, directory, rest, progress)
    return files, sorted(sent + uploaded), skipped


# A push pins the blobs it uploads or finds, so gc (at any grace period) leaves them alone
# until the version references them; an abandoned push's pins expire after this long.
PIN_SECONDS = 3600


def upload_missing(backend: RegistryBackend, directory: Path, files: dict[str, str],
                   progress: ProgressFactory | None) -> tuple[list[str], list[str]]:
    """Pin the stored blobs among ``files`` and upload (pinned) the others.

    Returns:
        The paths uploaded, the paths already stored.
    """
    digests = sorted(set(files.values()))
    try:
        missing = set(backend.pin_blobs(digests, seconds=PIN_SECONDS))
    except NotFound as exc:
        if type(exc) is not NotFound:
            raise
        # A registry from before pins (no such route): ask blob by blob, unpinned.
        missing = {d for d in digests if not backend.blob_exists(d)}
    uploaded: list[str] = []
    skipped: list[str] = []
    for path in sorted(files):
        digest = files[path]
        if digest not in missing:
            skipped.append(path)
            continue
        local = directory / path
        with progress_bar(progress, f"upload {path}", local.stat().st_size) as update:
            backend.upload_blob(digest, local, progress=update, pin_seconds=PIN_SECONDS)
        missing.discard(digest)
        uploaded.append(path)
    return uploaded, skipped


def register_base_dir(
    backend: RegistryBackend,
    *,
    name: str,
    directory: Path,
    settings: Settings,
    revision: str | None = None,
    progress: ProgressFactory | None = None,
) -> tuple[BaseModelOut, bool, list[str]]:
    """Register a local Hugging Face checkpoint directory: check it, upload it, record it.

    Only the checkpoint's own files are taken (top-level config, tokenizer and safetensors
    files); pickle weights beside safetensors ones are left out, a pickle-only checkpoint is
    refused before anything is uploaded.

    Returns:
        The base model, whether it was created, and the paths uploaded.
    """
    validate_name(name, what="base model name")
    if not directory.is_dir():
        raise InvalidInput(f"{directory} is not a directory")
    paths = [p for p in list_local_files(directory) if wanted(p) or p.endswith(PICKLE_SUFFIXES)]
    if any(p.endswith(".safetensors") for p in paths):
        paths = [p for p in paths if not p.endswith(PICKLE_SUFFIXES)]
    check_paths(paths)  # the server refuses a set it could not hand back; so do we, first
    read_checkpoint(paths, LocalDirAccess(directory), max_header_bytes=settings.max_header_bytes,
                    max_config_bytes=settings.max_config_bytes)
    files, uploaded, _ = upload_files(backend, directory, paths, progress)
    prov = detect_provenance()
    body = RegisterBaseIn(name=name, source=directory.resolve().as_uri(), revision=revision,
                          files=files, created_by=prov.created_by)
    base, created = with_reupload(
        lambda: backend.register_base(body), backend, directory, files, progress
    )
    return base, created, uploaded


def resolve(backend: RegistryBackend, ref: str) -> VersionOut:
    """The version a reference names: ``NAME@ALIAS``, ``NAME:VERSION`` or ``NAME`` (latest).

    The one resolver of every CLI command that takes a REF; an alias costs one request
    (``GET /api/v1/adapters/{name}/aliases/{alias}``), like a version.

    Raises:
        InvalidReference, AdapterNotFound, VersionNotFound, AliasNotFound.
    """
    parsed = parse_ref(ref)
    if parsed.alias is not None:
        return backend.resolve_alias(parsed.name, parsed.alias)
    return backend.get_version(parsed.name, parsed.version)


def pull(
    backend: RegistryBackend,
    *,
    ref: str,
    directory: Path,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> tuple[VersionOut, list[str]]:
    """Write every file of a version into ``directory``, each verified against its digest,
    with a manifest naming the version (``.adapter-registry.json``, `clientside.manifest`).

    The whole set is checked first (paths a server sends are untrusted: `check_paths`), then
    downloaded into a staging directory and installed only when every file matched its sha256
    and size (`registry.clientside.staging`), so a failed pull leaves ``directory`` as it was.

    Args:
        backend: The registry.
        ref: NAME, NAME:VERSION or NAME@ALIAS.
        directory: Must not exist or be empty, unless ``force``.
        force: Replace a non-empty ``directory``.
        progress: Progress bars, one per file.

    Returns:
        The version and the paths written.

    Raises:
        NotFound subclasses, DigestMismatch, InvalidPath (a server sent an unsafe path set),
        OutputExists (``directory`` is not empty).
    """
    version = resolve(backend, ref)
    check_paths([f.path for f in version.files])
    return version, _install(backend, version, requested=ref, directory=directory,
                             force=force, progress=progress)


@dataclass
class SyncResult:
    version: VersionOut
    files: list[str]
    changed: bool


def pull_if_changed(
    backend: RegistryBackend,
    *,
    ref: str,
    directory: Path,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> SyncResult:
    """`pull` for a poller: nothing is touched when ``directory`` already holds the version
    ``ref`` names (its manifest says so and every file has its recorded size: `manifest.holds`);
    a directory holding another pulled version (a registry manifest) is replaced in one swap,
    as with ``force``. A directory without a manifest is still refused unless ``force``.

    Returns:
        The version, its paths, and whether ``directory`` changed.

    Raises:
        As `pull`; InvalidInput when the version itself has a file named like the manifest.
    """
    version = resolve(backend, ref)
    check_paths([f.path for f in version.files])
    if any(f.path == MANIFEST_NAME for f in version.files):
        raise InvalidInput(f"{version.ref} has a file named {MANIFEST_NAME}: the manifest "
                           "--if-changed relies on cannot be written; pull it without "
                           "--if-changed")
    paths = [f.path for f in version.files]
    if holds(directory, version):
        return SyncResult(version, paths, changed=False)
    replace = force or (directory.is_dir() and not directory.is_symlink()
                        and read_manifest(directory) is not None)
    written = _install(backend, version, requested=ref, directory=directory, force=replace,
                       progress=progress)
    return SyncResult(version, written, changed=True)


def _install(backend: RegistryBackend, version: VersionOut, *, requested: str,
             directory: Path, force: bool, progress: ProgressFactory | None,
             hint: str = "--force") -> list[str]:
    written: list[str] = []
    with staged_dir(directory, force=force, hint=hint) as staging:
        for f in version.files:
            # check_paths refused "..", absolute paths and backslashes, and the staging
            # directory is new and ours: the join stays inside it.
            local = staging / f.path
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                with (
                    local.open("xb", buffering=0) as out,
                    contextlib.closing(HashingFileSink(out)) as sink,
                    progress_bar(progress, f"pull {f.path}", f.size) as upd,
                ):
                    backend.download_blob(f.digest, sink, progress=upd)  # type: ignore[arg-type]
                    os.fsync(out.fileno())
                    got = sink.digest()
            except OSError as exc:
                if exc.filename is None or exc.filename == str(local):
                    # A write through a descriptor (a full disk, a quota) names no file, and the
                    # staging name means nothing to the user: name the file being pulled.
                    raise OSError(exc.errno, f"pull failed: {exc.strerror or exc}",
                                  str(directory / f.path)) from exc
                raise
            if got != f.digest or sink.size != f.size:
                raise DigestMismatch(
                    f"{f.path}: downloaded content has digest {got} ({sink.size} bytes), "
                    f"expected {f.digest} ({f.size} bytes)"
                )
            written.append(f.path)
        if MANIFEST_NAME not in written:  # a version with a file of that name keeps its own
            write_manifest(staging, version, requested=requested)
    return written
