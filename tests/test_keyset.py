"""gen.keyset: the driver's set of work keys and seen seeds, 8 bytes a key in sorted numpy parts."""

from __future__ import annotations

import gen.keyset
from gen.keyset import KeySet
from gen.records import content_id


def test_members_stay_members_across_merges_and_parts(monkeypatch):
    monkeypatch.setattr(gen.keyset, "_PENDING", 1000)  # many merges from a few thousand keys
    keys = [content_id(i) for i in range(5000)]
    others = [content_id("other", i) for i in range(5000)]
    found = KeySet()
    assert [found.add(key) for key in keys] == [True] * len(keys)
    assert [found.add(key) for key in keys[::7]] == [False] * len(keys[::7])  # already there, merged or pending
    assert all(key in found for key in keys) and not any(key in found for key in others)
    assert len(found) == len(keys)
    assert sum(len(part) for part in found._parts) == 5000 - 5000 % 1000  # merged into the sorted parts
    assert sum(1 for part in found._parts if len(part)) > 200  # spread over the parts by their top bits
    assert all((part[1:] > part[:-1]).all() for part in found._parts)  # each sorted, no repeats


def test_keys_given_at_construction():
    found = KeySet(["a", "b", "a"])
    assert ("a" in found, "b" in found, "c" in found, len(found)) == (True, True, False, 2)
