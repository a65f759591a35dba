"""Version objects already built, by stamp: what `GET …/aliases/{alias}` serves serving fleets.

Resolving ``name@production`` is what every serving replica does all day. The stamp
(``queries.alias_stamp``, one indexed statement) names the version and everything about its
version object that can change; an equal stamp means the same JSON, which is then served
without loading and serialising the version again. The database is asked on every request,
so this holds no state a second replica could contradict.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_ENTRIES = 1024


class VersionObjects:
    """A bounded, thread-safe LRU of version-object JSON by stamp (one per app)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, stamp: tuple[object, ...]) -> bytes | None:
        with self._lock:
            body = self._entries.get(stamp)
            if body is not None:
                self._entries.move_to_end(stamp)
            return body

    def put(self, stamp: tuple[object, ...], body: bytes) -> None:
        with self._lock:
            self._entries[stamp] = body
            self._entries.move_to_end(stamp)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
