"""A set of strings held as their 64-bit hashes in sorted numpy arrays: 8 bytes a key, where a
Python set of 32-character ids takes ~100. What lets a driver remember ten million work keys
(committed on resume, or seen by the seed reader) without its memory growing past a few hundred MB.

Two different keys share a 64-bit hash with probability ~n^2 / 2^65: 3e-6 over ten million keys.
"""

from __future__ import annotations

import numpy as np
import xxhash

# New keys wait in a small Python set and are merged into the sorted arrays in runs of this many,
# so a merge (linear in the arrays) happens once per 65,536 adds.
_PENDING = 1 << 16
# The hashes are split by their top bits into this many sorted arrays, merged into one at a time:
# a merge needs memory for one array's copy beside the set, 1/256 of it, not a copy of it all.
_PART_BITS = 8
_PART_SHIFT = 64 - _PART_BITS


class KeySet:
    def __init__(self, keys=()):
        self._parts = [np.empty(0, dtype=np.uint64) for _ in range(1 << _PART_BITS)]
        self._pending: set[int] = set()
        for key in keys:
            self.add(key)

    def __contains__(self, key: str) -> bool:
        return self._holds(_hash(key))

    def add(self, key: str) -> bool:
        """Add ``key``; whether it was new."""
        digest = _hash(key)
        if self._holds(digest):
            return False
        self._pending.add(digest)
        if len(self._pending) >= _PENDING:
            self._merge()
        return True

    def _holds(self, digest: int) -> bool:
        if digest in self._pending:
            return True
        part = self._parts[digest >> _PART_SHIFT]
        if not len(part):  # a fresh run's: numpy's call alone costs more than the rest
            return False
        at = int(np.searchsorted(part, np.uint64(digest)))
        return at < len(part) and int(part[at]) == digest

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts) + len(self._pending)

    def _merge(self) -> None:
        new = np.sort(np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending)))
        bounds = np.searchsorted(new >> np.uint64(_PART_SHIFT), np.arange((1 << _PART_BITS) + 1, dtype=np.uint64))
        for index, (start, end) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
            if end > start:
                part = self._parts[index]
                self._parts[index] = np.insert(part, np.searchsorted(part, new[start:end]), new[start:end])
        self._pending.clear()


def _hash(key: str) -> int:
    return xxhash.xxh3_64_intdigest(key.encode("utf-8"))
