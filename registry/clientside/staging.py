"""Write a directory's files where nobody sees them, and install the directory only when complete.

Pulls (a version, a recorded export) download into a staging directory and install it at the
end, so a failure half-way (a digest mismatch, a full disk, an interrupt) leaves the target as it
was: never a partial set of files under their real names.

The target directory:

- does not exist: staged beside it (``.NAME.<random>.partial`` in its parent, created if
  needed) and renamed into place, one atomic rename;
- exists and is empty (a fresh mount point, the current directory): staged inside it
  (``DIR/.staging-<random>.partial``), then each verified top-level entry is renamed up into
  it; the directory itself is kept (a mount point cannot be replaced);
- exists and is not empty: refused (`OutputExists`), unless ``force``: then staged beside it,
  and once complete the two directories are exchanged in one step (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``: a reader sees the old directory or the new one, never none) and the old
  one removed; where the kernel or filesystem cannot exchange, the old directory is renamed
  aside and the new one renamed into place. A mount point cannot be renamed: empty it instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from registry.errors import OutputExists


def check_target(target: Path, *, force: bool, hint: str) -> None:
    """Refuse a target that is not a directory, or a non-empty one unless ``force``.

    Raises:
        OutputExists: as described.
    """
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputExists(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputExists(
            f"{target} exists and is not empty; use a new or empty directory, or pass {hint} "
            "to replace it"
        )


def _new_dir(parent: Path, name: str) -> Path:
    # Not tempfile.mkdtemp: its 0700 mode would become the installed directory's mode; mkdir
    # applies the user's umask like any directory they create.
    path = parent / name
    path.mkdir()
    return path


@contextlib.contextmanager
def staged_dir(target: Path, *, force: bool, hint: str = "--force") -> Iterator[Path]:
    """An empty staging directory whose contents become ``target`` when the block ends normally.

    On any exception (including KeyboardInterrupt) the staging directory is removed and
    ``target`` is left as it was.

    Args:
        target: The directory to create or fill.
        force: Replace a non-empty ``target``.
        hint: How the user asks for ``force`` (named in the error message).

    Raises:
        OutputExists: ``target`` is not a directory, or not empty without ``force``, or was
            filled by someone else while the block ran.
    """
    check_target(target, force=force, hint=hint)
    token = uuid.uuid4().hex[:12]
    inside = target.is_dir() and not any(target.iterdir())
    if inside:
        staging = _new_dir(target, f".staging-{token}.partial")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _new_dir(target.parent, f".{target.name}.{token}.partial")
    try:
        yield staging
        if inside:
            _move_up(staging, target)
        else:
            _rename_into_place(staging, target, force=force, token=token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_up(staging: Path, target: Path) -> None:
    others = [p for p in target.iterdir() if p != staging]
    if others:
        raise OutputExists(f"{target} was filled while the download ran ({others[0].name})")
    for entry in sorted(staging.iterdir()):
        os.rename(entry, target / entry.name)
    staging.rmdir()


def _rename_into_place(staging: Path, target: Path, *, force: bool, token: str) -> None:
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise OutputExists(f"{target} was filled while the download ran")
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old directory
            return
        old = target.parent / f".{target.name}.{token}.old"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return
    # rename(2) replaces an empty directory in one step.
    staging.rename(target)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    platform, libc or filesystem cannot (the caller then renames in two steps)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc without it (glibc < 2.28, some musl)
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
