"""The output directory: shards committed atomically, a journal that makes a crash resumable.

Layout of ``DIR``::

    data/part-00000.parquet       kept records (the training data)
    rejected/part-00000.parquet   dropped records, with drop_filter / drop_reason / drop_evidence
                                  (one schema for both: those columns are null in data/)
    _commits/00000.json           one per commit: its shards, their rows and sha256, the work
                                  items it completes, its token counts and drop reasons
    spec.json                     the resolved spec the directory was started with
    manifest.json                 written at the end of every run: all shards and the totals
    _quarantine/                  commits whose shards were found damaged, set aside on resume

A commit writes its shards under temporary names, then its journal entry (the commit point, an
atomic rename), then renames the shards. After a crash, :meth:`ShardSink.open` finishes the
renames of committed entries and deletes everything uncommitted, so each work item is either
wholly in the output or wholly absent: a resumed run redoes exactly the missing ones. A committed
shard found damaged (truncated by a full disk or a bad copy: its size differs from the journal's,
or it has no Parquet footer) takes its whole commit out of the output, into ``_quarantine/``,
so the resumed run makes those work items again.

One run at a time: the directory is locked with ``flock`` for the life of the run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gen.records import Record, to_table

log = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """The output directory cannot be used (locked, unwritable, holds another spec)."""


@dataclass
class CommittedWork:
    """What earlier runs into the same directory committed; what a resumed run skips or reloads."""

    root: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        """Committed work keys (a new set each call: take it once, outside loops)."""
        return {key for entry in self.entries for key in entry["work_keys"]}

    def shard_paths(self, kinds: tuple[str, ...] = ("data", "rejected")) -> list[Path]:
        return [self.root / entry[kind] for entry in self.entries for kind in kinds if entry.get(kind)]

    def records(self, columns: list[str] | None = None,
                kinds: tuple[str, ...] = ("data", "rejected")) -> list[Record]:
        """Committed records of ``kinds`` (``metadata`` parsed back into a dict)."""
        out: list[Record] = []
        for path in self.shard_paths(kinds):
            names = pq.read_schema(path).names
            wanted = [c for c in columns if c in names] if columns else None
            for row in pq.read_table(path, columns=wanted).to_pylist():
                if isinstance(row.get("metadata"), str):
                    row["metadata"] = json.loads(row["metadata"])
                out.append(row)
        return out


class ShardSink:
    def __init__(self, root: Path, compression: str):
        self.root = root
        self.compression = None if compression == "none" else compression
        self.committed = CommittedWork(root)
        self._lock_file = None

    @classmethod
    def open(cls, root: str | Path, identity: dict[str, Any], compression: str) -> ShardSink:
        """Lock ``root``, check it belongs to this spec, and recover it after a crash."""
        sink = cls(Path(root), compression)
        sink._lock()
        sink._check_identity(identity)
        sink._recover()
        return sink

    def _lock(self) -> None:
        try:
            for sub in ("data", "rejected", "_commits"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for the run
        except OSError as exc:
            raise OutputError(f"output.dir {self.root}: cannot write there: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            raise OutputError(f"output.dir {self.root}: another run is writing to it ({holder})") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._lock_file.flush()

    def _check_identity(self, identity: dict[str, Any]) -> None:
        path = self.root / "spec.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != identity:
                changed = sorted(_diff(previous, identity))
                raise OutputError(
                    f"output.dir {self.root} holds a run of a different spec (changed: "
                    f"{', '.join(changed)}); resume with the same spec or use another dir")
        else:
            _atomic_write(path, json.dumps(identity, indent=2, sort_keys=True))

    def _recover(self) -> None:
        for journal in sorted((self.root / "_commits").glob("*.json")):
            entry = json.loads(journal.read_text())
            shards = [self.root / entry[kind] for kind in ("data", "rejected") if entry.get(kind)]
            for final in shards:
                if not final.exists() and _tmp_name(final).exists():
                    os.replace(_tmp_name(final), final)  # crashed between commit and rename
            damage = {f: reason for f in shards
                      if (reason := _damage(f, entry["files"][str(f.relative_to(self.root))]))}
            if damage:
                self._quarantine(journal, shards, damage)
                continue
            self.committed.entries.append(entry)
        for sub in ("data", "rejected", "_commits"):
            for leftover in (self.root / sub).glob(".*.tmp"):
                leftover.unlink()  # written by a run that died before committing it

    def _quarantine(self, journal: Path, shards: list[Path], damage: dict[Path, str]) -> None:
        """Set a commit with a damaged shard aside: its work items are made again."""
        place = self.root / "_quarantine" / journal.stem
        place.mkdir(parents=True, exist_ok=True)
        for path in [journal, *shards]:
            if path.exists():
                os.replace(path, place / f"{path.parent.name}-{path.name}")
        log.warning("output.dir %s: damaged shard (%s); commit %s moved to %s, its work items will be made again",
                    self.root, "; ".join(damage.values()), journal.stem, place)

    @property
    def next_shard(self) -> int:
        return max((e["shard"] for e in self.committed.entries), default=-1) + 1

    def commit(self, kept: list[Record], rejected: list[Record], work_keys: list[str],
               drop_counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        """Write one shard of kept and one of rejected records, completing ``work_keys``."""
        shard = self.next_shard
        entry: dict[str, Any] = {
            "shard": shard,
            "work_keys": work_keys,
            "kept_rows": len(kept),
            "rejected_rows": len(rejected),
            "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in kept + rejected),
            "completion_tokens": sum(r.get("completion_tokens") or 0 for r in kept + rejected),
            "dropped": drop_counts,
            "committed_at": time.time(),
            "files": {},
        }
        staged = []
        for kind, records in (("data", kept), ("rejected", rejected)):
            if not records:
                entry[kind] = None
                continue
            final = self.root / kind / f"part-{shard:05d}.parquet"
            tmp = _tmp_name(final)
            pq.write_table(to_table(records), tmp, compression=self.compression)
            _fsync(tmp)
            entry[kind] = str(final.relative_to(self.root))
            entry["files"][entry[kind]] = {"rows": len(records), "bytes": tmp.stat().st_size,
                                           "sha256": _sha256(tmp)}
            staged.append((tmp, final))
        _atomic_write(self.root / "_commits" / f"{shard:05d}.json", json.dumps(entry))
        for tmp, final in staged:
            os.replace(tmp, final)
        self.committed.entries.append(entry)
        return entry

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        path = self.root / "manifest.json"
        _atomic_write(path, json.dumps(manifest, indent=2, default=str))
        return path

    def totals(self) -> dict[str, Any]:
        entries = self.committed.entries
        dropped: dict[str, Counter] = {}
        for entry in entries:
            for name, reasons in entry["dropped"].items():
                dropped.setdefault(name, Counter()).update(reasons)
        return {
            "records": sum(e["kept_rows"] + e["rejected_rows"] for e in entries),
            "kept": sum(e["kept_rows"] for e in entries),
            "rejected": sum(e["rejected_rows"] for e in entries),
            "work_items": sum(len(e["work_keys"]) for e in entries),
            "prompt_tokens": sum(e["prompt_tokens"] for e in entries),
            "completion_tokens": sum(e["completion_tokens"] for e in entries),
            "dropped": {name: dict(reasons) for name, reasons in dropped.items()},
        }

    def shards(self) -> list[dict[str, Any]]:
        return [{"path": path, "kind": path.split("/")[0], **info}
                for e in self.committed.entries for path, info in e["files"].items()]

    def close(self) -> None:
        if self._lock_file:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def _damage(path: Path, info: dict[str, Any]) -> str | None:
    """Why a committed shard cannot be trusted, or None. Cheap on purpose (a resume of a large
    output must not re-read it): its size against the journal's, and Parquet's footer magic."""
    if not path.exists():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if "bytes" in info and size != info["bytes"]:
        return f"{path.name} has {size} bytes, the journal says {info['bytes']}"
    with open(path, "rb") as f:
        f.seek(max(size - 4, 0))
        if f.read(4) != b"PAR1":
            return f"{path.name} has no Parquet footer"
    return None


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def _atomic_write(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            out |= _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
