"""A bounded map of values computed from immutable content, shared by the threads of a process.

Used where a result depends only on content named by digests (a base's parsed manifest, an
adapter's inspection and its verdicts) or is checked again before it is trusted (a push's
kept reads): the same key always means the same value, so a value may be kept and reused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` entries; the least recently used goes first. Values are shared between
    threads: never mutate one."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._values

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
