"""A set of strings held as their 64-bit hashes in one sorted numpy array: 8 bytes a key, where a
Python set of 32-character ids takes ~100. What lets a driver remember ten million work keys
(committed on resume, or seen by the seed reader) without its memory growing past a few hundred MB.

Two different keys share a 64-bit hash with probability ~n^2 / 2^65: 3e-6 over ten million keys.
"""

from __future__ import annotations

import numpy as np
import xxhash

# New keys wait in a small Python set and are merged into the sorted array in runs of this many,
# so a merge (linear in the array) happens once per 65,536 adds.
_PENDING = 1 << 16


class KeySet:
    def __init__(self, keys=()):
        self._sorted = np.empty(0, dtype=np.uint64)
        self._pending: set[int] = set()
        for key in keys:
            self.add(key)

    def __contains__(self, key: str) -> bool:
        digest = _hash(key)
        if digest in self._pending:
            return True
        if not len(self._sorted):  # a fresh run's: numpy's call alone costs more than the rest
            return False
        at = int(np.searchsorted(self._sorted, np.uint64(digest)))
        return at < len(self._sorted) and int(self._sorted[at]) == digest

    def add(self, key: str) -> None:
        if key in self:
            return
        self._pending.add(_hash(key))
        if len(self._pending) >= _PENDING:
            self._merge()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._pending)

    def _merge(self) -> None:
        new = np.sort(np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending)))
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)
        self._pending.clear()


def _hash(key: str) -> int:
    return xxhash.xxh3_64_intdigest(key.encode("utf-8"))
