"""Remote base-model sources: hf://org/repo[@rev] and s3://bucket/prefix, read header-only.

Both are referenced, not copied: only config files and safetensors headers are read (HTTP range
requests, ranged S3 GETs, or the local Hugging Face cache when offline). Parsing and the
allowlist are pure (`registry.formats.sources`); a server checks the allowlist before calling
anything here.

A source that cannot be read fails with one message whatever the reason (no such bucket or
repository, access denied, nothing under the prefix): a client must not learn from the error
whether a bucket or private repository exists. The reason is logged for the operator.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.db.enums import SourceKind
from registry.errors import InvalidInput, SourceUnavailable
from registry.formats import FileAccess, check_paths
from registry.formats.sources import HfRef, S3Ref, check_revision, parse_remote
from registry.storage import make_s3_client

__all__ = ["HfRef", "RemoteCheckpoint", "S3Ref", "open_remote", "parse_remote", "wanted"]

log = logging.getLogger(__name__)

# Files a base checkpoint needs beside its weights; anything else in a repo is ignored.
KEEP_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")


def wanted(path: str) -> bool:
    return "/" not in path and path.endswith(KEEP_SUFFIXES)


@dataclass
class RemoteCheckpoint:
    """A resolved, pinned remote checkpoint and read access to its files."""

    kind: SourceKind
    uri: str
    revision: str
    sizes: dict[str, int]
    etags: dict[str, str | None]
    access: FileAccess
    content_id: str
    local_dir: Path | None = field(default=None)


def _unreadable(uri: str, reason: object) -> SourceUnavailable:
    log.warning("base model source %s is unreadable: %s", uri, reason)
    return SourceUnavailable(
        f"cannot read {uri}: it does not exist, is not accessible to the registry, or holds "
        "no checkpoint files"
    )


class _DirFiles:
    """FileAccess over a directory whose entries may be symlinks (the HF cache layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def size(self, path: str) -> int:
        return (self.root / path).stat().st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        with (self.root / path).open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)


def _content_id(parts: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for key in sorted(parts):
        h.update(f"{key}\t{parts[key]}\n".encode())
    return f"sha256:{h.hexdigest()}"


def open_hf(ref: HfRef, *, revision: str | None, cache_dir: Path | None,
            offline: bool) -> RemoteCheckpoint:
    """Resolve a Hugging Face repository to a pinned commit and give header-only access.

    Offline (``REGISTRY_HF_OFFLINE`` / ``HF_HUB_OFFLINE``): the local HF cache is the only
    source; online: the Hub API pins the revision and reads use HTTP range requests.

    Raises:
        SourceUnavailable: the repository or revision cannot be resolved.
    """
    # huggingface_hub loads here, not at start-up: only hf:// sources need it (~0.2 s).
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    wanted_rev = check_revision(ref.revision or revision or "main")
    if ref.revision and revision and ref.revision != revision:
        raise InvalidInput(f"revision given twice: @{ref.revision} and --revision {revision}")
    if offline:
        try:
            folder = Path(snapshot_download(
                ref.repo_id, revision=wanted_rev, cache_dir=cache_dir, local_files_only=True,
            ))  # type: ignore[arg-type]
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            log.warning("hf://%s@%s is not in the HF cache: %s", ref.repo_id, wanted_rev, exc)
            raise SourceUnavailable(
                f"hf://{ref.repo_id}@{wanted_rev} is not in the local Hugging Face cache and "
                "offline mode is on"
            ) from None
        sha = folder.name
        paths = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
        paths = [p for p in paths if wanted(p)]
        check_paths(paths)
        sizes = {p: (folder / p).stat().st_size for p in paths}
        etags: dict[str, str | None] = {
            p: (folder / p).resolve().name if (folder / p).is_symlink() else None for p in paths
        }
        return RemoteCheckpoint(
            kind=SourceKind.hf, uri=f"hf://{ref.repo_id}@{sha}", revision=sha, sizes=sizes,
            etags=etags,
            access=_DirFiles(folder), content_id=f"hf:{ref.repo_id}@{sha}", local_dir=folder,
        )
    return _open_hf_online(ref.repo_id, wanted_rev, cache_dir=cache_dir)


class _HfHttpFiles:
    """FileAccess over Hub files at a pinned commit, with HTTP range requests."""

    def __init__(self, repo_id: str, sha: str, sizes: dict[str, int]) -> None:
        self.repo_id, self.sha, self.sizes = repo_id, sha, sizes

    def size(self, path: str) -> int:
        return self.sizes[path]

    def read(self, path: str, offset: int, length: int) -> bytes:
        # huggingface_hub loads here, not at start-up: only hf:// sources need it.
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        if length <= 0:
            return b""
        url = hf_hub_url(self.repo_id, path, revision=self.sha)
        headers = {**build_hf_headers(), "Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            response = get_session().get(url, headers=headers, follow_redirects=True)
            hf_raise_for_status(response)
        except Exception as exc:  # any transport or HTTP failure is the source being unreachable
            raise _unreadable(f"hf://{self.repo_id}@{self.sha}/{path}", exc) from None
        return bytes(response.content[:length])


def _open_hf_online(repo_id: str, revision: str, *, cache_dir: Path | None) -> RemoteCheckpoint:
    from huggingface_hub import HfApi  # loaded here, not at start-up: only hf:// needs it

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # network, auth, missing repo or revision: all unreachable for us
        raise _unreadable(f"hf://{repo_id}@{revision}", exc) from None
    sha = info.sha
    if not sha:
        raise _unreadable(f"hf://{repo_id}@{revision}", "the Hub returned no commit")
    sizes: dict[str, int] = {}
    etags: dict[str, str | None] = {}
    for sibling in info.siblings or []:
        if wanted(sibling.rfilename) and sibling.size is not None:
            sizes[sibling.rfilename] = sibling.size
            lfs = getattr(sibling, "lfs", None)
            etags[sibling.rfilename] = getattr(lfs, "sha256", None) if lfs else sibling.blob_id
    check_paths(sizes)
    return RemoteCheckpoint(
        kind=SourceKind.hf, uri=f"hf://{repo_id}@{sha}", revision=sha, sizes=sizes, etags=etags,
        access=_HfHttpFiles(repo_id, sha, sizes), content_id=f"hf:{repo_id}@{sha}",
    )


class _S3Files:
    """FileAccess over objects under an S3 prefix, with ranged GETs."""

    def __init__(self, client: Any, bucket: str, prefix: str, sizes: dict[str, int]) -> None:
        self.client, self.bucket, self.prefix, self.sizes = client, bucket, prefix, sizes

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def size(self, path: str) -> int:
        return self.sizes[path]

    def read(self, path: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError  # boto3: ~0.25 s at start-up

        if length <= 0:
            return b""
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.key(path),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            return bytes(response["Body"].read())
        except (BotoCoreError, ClientError) as exc:
            raise _unreadable(f"s3://{self.bucket}/{self.key(path)}", exc) from None


def open_s3(ref: S3Ref, *, revision: str | None) -> RemoteCheckpoint:
    """List the checkpoint under an S3 prefix (standard AWS configuration) and read headers.

    Raises:
        SourceUnavailable: the bucket cannot be listed.
    """
    from botocore.exceptions import BotoCoreError, ClientError  # boto3: ~0.25 s at start-up

    client = make_s3_client()
    prefix = f"{ref.prefix}/" if ref.prefix else ""
    uri = f"s3://{ref.bucket}/{ref.prefix}" if ref.prefix else f"s3://{ref.bucket}"
    sizes: dict[str, int] = {}
    etags: dict[str, str | None] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=ref.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                path = obj["Key"][len(prefix):]
                if wanted(path):
                    sizes[path] = int(obj["Size"])
                    etags[path] = str(obj.get("ETag", "")).strip('"') or None
    except (BotoCoreError, ClientError) as exc:
        raise _unreadable(uri, exc) from None
    if not sizes:
        raise _unreadable(uri, "no checkpoint files under the prefix")
    check_paths(sizes)
    content_id = _content_id({p: f"{sizes[p]}:{etags[p]}" for p in sizes})
    return RemoteCheckpoint(
        kind=SourceKind.s3, uri=uri, revision=revision or f"etag-{content_id[7:19]}", sizes=sizes,
        etags=etags, access=_S3Files(client, ref.bucket, ref.prefix, sizes),
        content_id=content_id,
    )


def open_remote(ref: HfRef | S3Ref, *, revision: str | None, cache_dir: Path | None,
                offline: bool) -> RemoteCheckpoint:
    """Resolve and open a parsed source (the caller checked it against its allowlist).

    Raises:
        SourceUnavailable: it cannot be read (one message whatever the reason).
        InvalidInput: a path-like revision, or the revision given twice.
    """
    if revision is not None:
        check_revision(revision)
    if isinstance(ref, HfRef):
        return open_hf(ref, revision=revision, cache_dir=cache_dir, offline=offline)
    return open_s3(ref, revision=revision)
