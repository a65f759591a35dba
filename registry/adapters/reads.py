"""What a push reads before its write, kept per database so the next push can skip the read.

A push on PostgreSQL outside a transaction reads its blob rows and the registered bases, then
writes in one statement that checks both again (``registry.adapters.writes``): every blob row
``(id, digest)`` present and locked, and the bases exactly as read (the text of the same JSON
expression). So what was read may be kept: a push whose blobs and bases are all kept skips the
read (one round trip instead of two), and if anything changed since, its write writes nothing
(``ReadChanged``) and the push reads afresh and tries once more. Nothing here is trusted without
that check: a kept row is only a guess the write verifies.

Blob rows are kept by digest (with what was parsed from the content, which never changes), at
most ``KEPT_BLOBS`` per database, the oldest dropped first.

An adapter's inspection is kept too, by its files' paths and digests and the limits
(``KeptReads.inspections``): what the content says, which was parsed (and kept with the blob
rows, ``blobs.parsed``) by the push that first used it in this database.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

from registry.blobs.service import BlobRow
from registry.db.models import BaseModelRow
from registry.formats.adapter import AdapterInspection, Limits
from registry.memo import Memo

# Bounds: a kept blob row holds its parsed header (for a LoRA of a 70B model, ~1,000 tensors,
# a few hundred KB as objects) and an inspection the same again, so a handful of recent
# adapters, not a history: enough for a push retried or sent to a second adapter or
# environment.
KEPT_BLOBS = 256
KEPT_INSPECTIONS = 64


# An adapter's files (path, digest), sorted, with the limits checked: what inspect_adapter
# found for them. A push of files checked before (a retry, a second adapter or environment,
# a re-push) reuses it.
FilesKey = tuple[tuple[tuple[str, str], ...], Limits]


@dataclass
class KeptReads:
    blobs: Memo[str, BlobRow] = field(default_factory=lambda: Memo(KEPT_BLOBS))
    bases: tuple[str, list[BaseModelRow]] | None = None  # (the JSON text, transient rows)
    inspections: Memo[FilesKey, AdapterInspection] = field(
        default_factory=lambda: Memo(KEPT_INSPECTIONS))

    def get(self, files: Mapping[str, str]) -> tuple[dict[str, BlobRow], str,
                                                    list[BaseModelRow]] | None:
        """The blob row of every file and the bases, when all are kept; else None. (Kept
        rows and bases need not be of one moment: the write checks them all.)"""
        bases = self.bases
        if bases is None:
            return None
        rows = {}
        for path, digest in files.items():
            row = self.blobs.get(digest)
            if row is None or row.changed:
                return None
            rows[path] = row
        return rows, bases[0], bases[1]

    def keep(self, rows: Iterable[BlobRow], bases_json: str,
             bases: list[BaseModelRow]) -> None:
        """Keep what a push read (after its parse cache was saved) and the bases it used
        (transient objects only: nothing bound to a session)."""
        for row in rows:
            self.blobs.put(row.digest, row)
        self.bases = (bases_json, bases)  # one reference, replaced whole

    def forget(self) -> None:
        self.blobs.clear()
        self.bases = None


def files_key(files: Mapping[str, BlobRow], limits: Limits) -> FilesKey:
    return tuple(sorted((path, row.digest) for path, row in files.items())), limits


_kept: weakref.WeakKeyDictionary[Engine, KeptReads] = weakref.WeakKeyDictionary()
_kept_lock = threading.Lock()


def kept_for(engine: Engine) -> KeptReads:
    with _kept_lock:
        kept = _kept.get(engine)
        if kept is None:
            kept = _kept[engine] = KeptReads()
        return kept
