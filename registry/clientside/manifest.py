"""The manifest a pull writes into its directory (``.adapter-registry.json``): which version the
directory holds and each file's digest and size, so ``pull --if-changed`` (a serving node's
sidecar polling ``NAME@production``) can tell, without downloading or hashing anything, that
the directory already holds the version an alias names."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.adapters.schemas import VersionOut
from registry.formats.adapter import PULL_MANIFEST

MANIFEST_NAME = PULL_MANIFEST  # left out of every push (formats.list_local_files)
MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # 1,000 files with long paths fit many times over


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    ref: str
    content_digest: str
    files: dict[str, tuple[str, int]]  # path → (digest, size)

    def same_version(self, version: VersionOut) -> bool:
        """Names ``version`` with exactly its files (a version's files never change, but a
        registry rebuilt from scratch may reuse a name and number for other content)."""
        return (self.name == version.name and self.version == version.version
                and self.content_digest == version.content_digest
                and self.files == {f.path: (f.digest, f.size) for f in version.files})


def manifest_json(version: VersionOut, *, requested: str) -> dict[str, Any]:
    """The manifest of ``version`` pulled as ``requested`` (``NAME@ALIAS`` as typed)."""
    return {
        "format": MANIFEST_FORMAT,
        "name": version.name,
        "version": version.version,
        "ref": version.ref,
        "requested": requested,
        "content_digest": version.content_digest,
        "base_model": version.base_model,
        "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [{"path": f.path, "digest": f.digest, "size": f.size}
                  for f in sorted(version.files, key=lambda f: f.path)],
    }


def write_manifest(directory: Path, version: VersionOut, *, requested: str) -> None:
    path = directory / MANIFEST_NAME
    with path.open("x", encoding="utf-8") as out:
        json.dump(manifest_json(version, requested=requested), out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory``, or None when there is none or it is not one of ours
    (unreadable, malformed, another format): such a directory is treated as foreign."""
    path = directory / MANIFEST_NAME
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            return None
        files: dict[str, tuple[str, int]] = {}
        for f in data["files"]:
            path_, digest, size = f["path"], f["digest"], f["size"]
            if not (isinstance(path_, str) and isinstance(digest, str)
                    and type(size) is int and path_ not in files):
                return None
            files[path_] = (digest, size)
        name, number, ref, content = (data["name"], data["version"], data["ref"],
                                      data["content_digest"])
        if not (isinstance(name, str) and type(number) is int and isinstance(ref, str)
                and isinstance(content, str)):
            return None
        return Manifest(name=name, version=number, ref=ref, content_digest=content, files=files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holds(directory: Path, version: VersionOut) -> bool:
    """Whether ``directory`` holds ``version`` as a pull left it: its manifest names that
    version and every file is still there, a regular file of the recorded size (not hashed:
    this is the cheap check a poller runs; a pull verified each digest when it wrote them)."""
    if not directory.is_dir() or directory.is_symlink():
        return False
    manifest = read_manifest(directory)
    if manifest is None or not manifest.same_version(version):
        return False
    for path, (_digest, size) in manifest.files.items():
        try:
            st = (directory / path).lstat()
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
    return True
