"""A small bounded LRU whose entries carry their own expiry, for verified tokens and API keys."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
_MISSING = object()


class ExpiringLRU(Generic[V]):
    """Up to `maxsize` entries; an entry is served until its deadline on `clock`, then dropped."""

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self.clock = clock
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=None):
        """The live value for `key`, or `default`.

        Without the lock: each OrderedDict operation is atomic, and a race with `put` can only drop an
        entry (read as a miss) or skip one recency update. This runs on every authenticated request,
        where taking a gevent-patched lock costs more than the lookup itself.
        """
        entry = self._data.get(key, _MISSING)
        if entry is _MISSING:
            return default
        deadline, value = entry
        if deadline <= self.clock():
            self._data.pop(key, None)
            return default
        try:
            self._data.move_to_end(key)
        except KeyError:
            pass
        return value

    def put(self, key: Hashable, value: V, deadline: float) -> None:
        """Keep `value` until `deadline`, evicting the least recently used entry when full."""
        if self.maxsize == 0 or deadline <= self.clock():
            return
        with self._lock:
            self._data[key] = (deadline, value)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
