"""The output directory: shards committed atomically, a journal that makes a crash resumable.

``DIR`` is a local path or a URI of any filesystem pyarrow speaks (``s3://bucket/prefix``,
``gs://``, ``hdfs://``; :mod:`gen.storage`). Layout::

    data/part-00000-<writer>.parquet      kept records (the training data)
    rejected/part-00000-<writer>.parquet  dropped records, with drop_filter / drop_reason / drop_evidence
                                          (one schema for both: those columns are null in data/)
    _commits/00000.json                   one per commit: its shards, their rows, bytes and sha256,
                                          the work items it completes, its token counts and drop reasons
    spec.json                             the resolved spec the directory was started with
    manifest.json                         written at the end of every run: all shards and the totals
    _quarantine/                          commits whose shards were found damaged, set aside on resume

The commit protocol renames nothing, since object stores cannot rename atomically:

1. A commit writes its shards under names no other commit uses: the shard number and ``<writer>``,
   a random token of the run that writes them.
2. Then its journal entry ``_commits/NNNNN.json``, one whole object: the commit point. (An object
   store's PUT is atomic; a local file is written under a temporary name and renamed.)
3. :meth:`ShardSink.open` trusts only shards a journal entry names: any other file in ``data/``
   or ``rejected/`` was written by a run that died before its commit point, and is deleted. So each
   work item is either wholly in the output or wholly absent, and a resumed run redoes exactly the
   missing ones. A committed shard found damaged (its size differs from the journal's, or it has
   no Parquet footer: a truncated local file, a bad copy) takes its whole commit out of the output,
   into ``_quarantine/``, so the resumed run makes those work items again.

One writer at a time. A local directory is locked with ``flock`` for the life of the run. An
object store has no locks, so the writer holds a lease: the object ``DIR/.lock`` names it and is
renewed every ``LEASE_S / 4`` seconds; a run refuses a directory whose lease is fresh, unless its
holder is a dead process on the same host (a ``kill -9``'d run, resumed at once), and checks
that the lease is still its own before every journal entry, so a writer that lost it (paused for
longer than the lease) stops before it commits. The check and the PUT that follows are not one
atomic step: two writers can both commit only if one stalls for a whole lease between them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gen.keyset import KeySet
from gen.records import Record, to_table
from gen.storage import Location

log = logging.getLogger(__name__)

SHARD_KINDS = ("data", "rejected")

# Rows per batch when committed shards are read back (resume, a lost dedup index): memory holds
# one batch of the columns asked for, never a whole output.
READ_BATCH_ROWS = 8192


class OutputError(RuntimeError):
    """The output directory cannot be used (locked, unwritable, holds another spec)."""


@dataclass
class CommittedWork:
    """What earlier runs into the same directory committed; what a resumed run skips or reloads.

    The journal entries are kept without their work keys (millions in a large run): those of
    earlier runs are in ``keys``, at 8 bytes each; this run's commits are counted only, as it never
    meets their work items again (so its memory does not grow with them).
    """

    root: Location
    entries: list[dict[str, Any]] = field(default_factory=list)
    keys: KeySet = field(default_factory=KeySet)

    def add(self, entry: dict[str, Any], earlier_run: bool = True) -> None:
        if earlier_run:
            for key in entry["work_keys"]:
                self.keys.add(key)
        self.entries.append({**{k: v for k, v in entry.items() if k != "work_keys"},
                             "work_items": len(entry["work_keys"])})

    def shards(self, kinds: tuple[str, ...] = SHARD_KINDS) -> list[Location]:
        return [self.root.child(entry[kind]) for entry in self.entries for kind in kinds if entry.get(kind)]

    def batches(self, columns: list[str] | None = None,
                kinds: tuple[str, ...] = SHARD_KINDS) -> Iterator[list[Record]]:
        """Committed records of ``kinds``, ``columns`` only, in batches of ``READ_BATCH_ROWS``
        (``metadata`` and ``scores`` parsed back into dicts)."""
        for shard in self.shards(kinds):
            yield from read_batches(shard, columns)

    def records(self, columns: list[str] | None = None,
                kinds: tuple[str, ...] = SHARD_KINDS) -> Iterator[Record]:
        for batch in self.batches(columns, kinds):
            yield from batch


def read_batches(shard: Location, columns: list[str] | None = None) -> Iterator[list[Record]]:
    """The records of one Parquet file, ``columns`` only (those it has), a batch at a time."""
    with shard.open() as f:
        parquet = pq.ParquetFile(f)
        wanted = [c for c in columns if c in parquet.schema_arrow.names] if columns else None
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted):
            rows = batch.to_pylist()
            for row in rows:
                for column in ("metadata", "scores"):
                    if isinstance(row.get(column), str):
                        row[column] = json.loads(row[column])
            yield rows


class ShardSink:
    def __init__(self, root: Location, compression: str):
        self.root = root
        self.compression = None if compression == "none" else compression
        self.committed = CommittedWork(root)
        self.writer = secrets.token_hex(4)
        self._guard: _Flock | _Lease | None = None

    @classmethod
    def open(cls, root: str | Path, identity: dict[str, Any], compression: str) -> ShardSink:
        """Lock ``root``, check it belongs to this spec, and recover it after a crash."""
        try:
            location = Location.of(root)
        except ValueError as exc:
            raise OutputError(f"output.dir {exc}") from None
        sink = cls(location, compression)
        try:
            sink._guard = (_Flock if location.local else _Lease)(location, sink.writer)
        except OSError as exc:  # a bucket that does not exist, credentials refused, ...
            raise OutputError(f"output.dir {location}: cannot write there: {exc.strerror or exc}") from exc
        try:
            sink._check_identity(identity)
            sink._recover()
        except BaseException:
            sink.close()
            raise
        return sink

    def _check_identity(self, identity: dict[str, Any]) -> None:
        path = self.root.child("spec.json")
        if path.exists():
            changed = sorted(_diff(json.loads(path.read_bytes()), identity))
            if changed:
                raise OutputError(
                    f"output.dir {self.root} holds a run of a different spec (changed: "
                    f"{', '.join(changed)}); resume with the same spec or use another dir")
        else:
            path.write_bytes(json.dumps(identity, indent=2, sort_keys=True).encode())

    def _recover(self) -> None:
        sizes = {shard.path: size for kind in SHARD_KINDS for shard, size in self.root.child(kind).file_sizes()}
        named: set[str] = set()  # by a journal entry: committed, or set aside just now
        for journal in self.root.child("_commits").files(".json"):
            entry = json.loads(journal.read_bytes())
            shards = [self.root.child(entry[kind]) for kind in SHARD_KINDS if entry.get(kind)]
            named.update(s.path for s in shards)
            damage = {s.path: reason for s in shards if (reason := _damage(s, sizes.get(s.path), entry["files"]))}
            if damage:
                self._quarantine(journal, shards, damage)
                continue
            self.committed.add(entry)
        for path in sizes.keys() - named:
            self.root.fs.delete_file(path)  # written by a run that died before committing it
        for leftover in self.root.child("_commits").files(".tmp"):
            leftover.delete()  # a local journal entry that never reached its rename

    def _quarantine(self, journal: Location, shards: list[Location], damage: dict[str, str]) -> None:
        """Set a commit with a damaged shard aside: its work items are made again. The journal
        entry goes first: once it is gone the commit is undone, whatever happens next."""
        place = self.root.child("_quarantine", journal.name.removesuffix(".json"))
        for location in [journal, *shards]:
            if location.exists():
                target = place.child(f"{location.path.rsplit('/', 2)[-2]}-{location.name}")
                target.write_bytes(location.read_bytes())
                location.delete()
        log.warning("output.dir %s: damaged shard (%s); commit %s moved to %s, its work items will be made again",
                    self.root, "; ".join(damage.values()), journal.name, place)

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
        for kind, records in (("data", kept), ("rejected", rejected)):
            if not records:
                entry[kind] = None
                continue
            buffer = pa.BufferOutputStream()
            pq.write_table(to_table(records), buffer, compression=self.compression)
            data = buffer.getvalue()
            entry[kind] = f"{kind}/part-{shard:05d}-{self.writer}.parquet"
            self.root.child(entry[kind]).write_bytes(data, atomic=False)  # uncommitted until the journal names it
            entry["files"][entry[kind]] = {"rows": len(records), "bytes": data.size,
                                           "sha256": hashlib.sha256(data).hexdigest()}
        self._guard.check()
        self.root.child("_commits", f"{shard:05d}.json").write_bytes(json.dumps(entry).encode())
        self.committed.add(entry, earlier_run=False)
        return self.committed.entries[-1]

    def write_manifest(self, manifest: dict[str, Any]) -> Location:
        path = self.root.child("manifest.json")
        path.write_bytes(json.dumps(manifest, indent=2, default=str).encode())
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
            "work_items": sum(e["work_items"] for e in entries),
            "prompt_tokens": sum(e["prompt_tokens"] for e in entries),
            "completion_tokens": sum(e["completion_tokens"] for e in entries),
            "dropped": {name: dict(reasons) for name, reasons in dropped.items()},
        }

    def shards(self) -> list[dict[str, Any]]:
        return [{"path": path, "kind": path.split("/")[0], **info}
                for e in self.committed.entries for path, info in e["files"].items()]

    def close(self) -> None:
        if self._guard:
            self._guard.release()
            self._guard = None


class _Flock:
    """A local directory's writer: ``flock`` on ``DIR/.lock``, released by the kernel when the
    process dies, however it dies."""

    def __init__(self, root: Location, writer: str):
        self.root = root
        try:
            for sub in ("data", "rejected", "_commits"):
                Path(root.path, sub).mkdir(parents=True, exist_ok=True)
            self.file = open(Path(root.path, ".lock"), "a+")  # noqa: SIM115 - held for the run
        except OSError as exc:
            raise OutputError(f"output.dir {root}: cannot write there: {exc.strerror}") from exc
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise OutputError(f"output.dir {root}: another run is writing to it ({holder})") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def check(self) -> None:
        """The kernel holds the lock for this process: nothing can take it."""

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class _Lease:
    """An object store's writer: the lease object ``DIR/.lock`` (owner, pid, host, renewed_at),
    renewed by a thread every ``LEASE_S / 4`` s. See the module docstring for what it guarantees."""

    LEASE_S = 60.0

    def __init__(self, root: Location, writer: str):
        self.lock, self.writer = root.child(".lock"), writer
        self.lost = threading.Event()
        self.stop = threading.Event()
        holder = self._holder()
        if holder and not self._stale(holder):
            raise OutputError(f"output.dir {root}: another run is writing to it "
                              f"(pid {holder['pid']} on {holder['host']}, lease renewed "
                              f"{time.time() - holder['renewed_at']:.0f} s ago)")
        self._renew()
        self.thread = threading.Thread(target=self._keep, name="sdg-output-lease", daemon=True)
        self.thread.start()

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.lock.read_bytes())
        except FileNotFoundError:
            return None

    def _stale(self, holder: dict[str, Any]) -> bool:
        if time.time() - holder["renewed_at"] > self.LEASE_S:
            return True
        if holder["host"] == socket.gethostname():
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True  # its holder died on this machine: no need to wait out the lease
            except PermissionError:
                pass
        return False

    def _renew(self) -> None:
        self.lock.write_bytes(json.dumps({"owner": self.writer, "pid": os.getpid(), "host": socket.gethostname(),
                                          "renewed_at": time.time()}).encode())

    def _keep(self) -> None:
        while not self.stop.wait(self.LEASE_S / 4):
            try:
                holder = self._holder()
                if not holder or holder["owner"] != self.writer:
                    self.lost.set()
                    return
                self._renew()
            except OSError as exc:  # a store briefly unreachable: the next renewal may work
                log.warning("output lease %s: renewal failed: %s", self.lock, exc)

    def check(self) -> None:
        """Before a commit point: the lease must still be this run's."""
        holder = self._holder()
        if self.lost.is_set() or not holder or holder["owner"] != self.writer:
            self.lost.set()
            raise OutputError(f"output.dir {self.lock}: this run lost its lease to another writer "
                              f"({holder and holder['pid']} on {holder and holder['host']}); it stops "
                              "without committing")

    def release(self) -> None:
        self.stop.set()
        self.thread.join()
        holder = self._holder()
        if holder and holder["owner"] == self.writer:
            self.lock.delete()


def _damage(shard: Location, size: int | None, files: dict[str, Any]) -> str | None:
    """Why a committed shard cannot be trusted, or None. Cheap on purpose (a resume of a large
    output must not re-read it): its size, from the listing, against the journal's, and Parquet's
    footer magic, one 4-byte read."""
    info = files[shard.path.rsplit("/", 2)[-2] + "/" + shard.name]
    if size is None:
        return f"{shard.name} is missing"
    if size != info["bytes"]:
        return f"{shard.name} has {size} bytes, the journal says {info['bytes']}"
    with shard.open() as f:
        if f.read_at(4, max(size - 4, 0)) != b"PAR1":
            return f"{shard.name} has no Parquet footer"
    return None


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    """The fields two identities disagree on. A field only one of them has counts as the same when
    it is off there (null, false, 0, empty): a spec field added to sdg with a default that keeps
    the old behaviour leaves the runs made before it resumable."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            only_one_has_it = (key in a) != (key in b)
            if only_one_has_it and not (a[key] if key in a else b[key]):
                continue
            out |= _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
