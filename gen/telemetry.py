"""What a run tells while it goes: a time series in the output dir, and Ray metrics.

``DIR/timeline.jsonl`` is append-only, one JSON object a line: every ``SAMPLE_EVERY_S`` one line per
engine replica (its completion tokens so far, the requests it holds, the requests sent again).
Replicas are numbered across the run's engines in the spec's order, each line naming its engine.
Each line names its run (``run``: when that invocation started), so a killed and resumed run
keeps both parts and the report draws both. A line cut short by a kill is skipped by the reader.
Commits over time need no line here: the commit journal has them (``committed_at``). An object
store cannot append: there the lines are kept in memory and the whole object is written again
when the run ends (a killed run's lines are lost; its commits are not).

The same numbers go to Ray's metrics (``ray.util.metrics``), which the cluster's Prometheus
endpoint and dashboard show during the run; Prometheus prefixes each name with ``ray_`` (and a
counter's with ``_total`` after it): see README, Live metrics.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from gen.storage import Location

if TYPE_CHECKING:
    from cluster.engine import EnginePool

log = logging.getLogger(__name__)

TIMELINE = "timeline.jsonl"
SAMPLE_EVERY_S = 1.0
COMMIT_SECONDS_BOUNDARIES = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60]


@dataclass(frozen=True)
class _Metrics:
    tokens: Any
    in_flight: Any
    retried: Any
    kept: Any
    dropped: Any
    commit_seconds: Any


@cache
def _metrics() -> _Metrics:
    """Registered once per process (a notebook or a test session runs several runs)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    return _Metrics(
        tokens=Counter("sdg_tokens_generated", "Completion tokens generated, per engine replica.",
                       tag_keys=("replica",)),
        in_flight=Gauge("sdg_requests_in_flight", "Requests an engine replica holds now.", tag_keys=("replica",)),
        retried=Counter("sdg_requests_retried",
                        "Requests sent again because this replica was lost (an infrastructure failure).",
                        tag_keys=("replica",)),
        kept=Counter("sdg_records_kept", "Records committed to data/."),
        dropped=Counter("sdg_records_dropped", "Records committed to rejected/, per stage or filter and reason.",
                        tag_keys=("by", "reason")),
        commit_seconds=Histogram("sdg_commit_seconds", "Time to filter and write one commit (shard pair).",
                                 boundaries=COMMIT_SECONDS_BOUNDARIES),
    )


class Telemetry:
    """Samples the engine pool and records commits, into ``DIR/timeline.jsonl`` and Ray's metrics."""

    def __init__(self, root: Location, engines: dict[str, EnginePool]):
        self.engines = engines
        self.run = datetime.now(UTC).isoformat(timespec="seconds")
        self.metrics = _metrics()
        self._timeline = root.child(TIMELINE)
        # Held for the run, one line a write; in memory on an object store (see above).
        self._file = open(self._timeline.path, "a", buffering=1) if root.local else io.StringIO()  # noqa: SIM115
        replicas = sum(len(pool.replicas) for pool in engines.values())
        self._tokens_seen = [0] * replicas
        self._retries_seen = [0] * replicas

    async def sample_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), timeout=SAMPLE_EVERY_S)
            except TimeoutError:
                pass
        self.sample()

    def sample(self) -> None:
        now = time.time()
        replica = -1
        for name, pool in self.engines.items():
            for in_pool, in_flight in enumerate(pool.in_flight()):
                replica += 1
                self._sample_replica(now, name, replica, pool.completion_tokens_by_replica[in_pool],
                                     pool.failures_by_replica[in_pool], in_flight)

    def _sample_replica(self, now: float, model: str, replica: int, tokens: int, retries: int, in_flight: int) -> None:
        tags = {"replica": str(replica)}
        if tokens > self._tokens_seen[replica]:  # a Ray counter takes positive steps only
            self.metrics.tokens.inc(tokens - self._tokens_seen[replica], tags=tags)
        if retries > self._retries_seen[replica]:
            self.metrics.retried.inc(retries - self._retries_seen[replica], tags=tags)
        self.metrics.in_flight.set(in_flight, tags=tags)
        self._tokens_seen[replica], self._retries_seen[replica] = tokens, retries
        self._file.write(json.dumps({"run": self.run, "t": now, "replica": replica, "model": model,
                                     "completion_tokens": tokens, "in_flight": in_flight,
                                     "retried": retries}) + "\n")

    def committed(self, entry: dict[str, Any], seconds: float) -> None:
        """One commit of the sink (its journal entry) and the time filtering and writing it took."""
        if entry["kept_rows"]:
            self.metrics.kept.inc(entry["kept_rows"])
        for by, reasons in entry["dropped"].items():
            for reason, count in reasons.items():
                self.metrics.dropped.inc(count, tags={"by": by, "reason": reason})
        self.metrics.commit_seconds.observe(seconds)

    def close(self) -> None:
        if isinstance(self._file, io.StringIO):
            try:
                earlier = self._timeline.read_bytes() if self._timeline.exists() else b""
                self._timeline.write_bytes(earlier + self._file.getvalue().encode())
            except OSError as exc:  # the run's own outcome (maybe this store failing) is what to report
                log.warning("%s: the run's time series was not written (%s)", self._timeline, exc)
        self._file.close()


def read_timeline(root: Location) -> Iterator[dict[str, Any]]:
    """The lines of ``DIR/timeline.jsonl``, all runs, in order; a line cut short by a kill is skipped."""
    timeline = root.child(TIMELINE)
    if not timeline.exists():
        return
    for line in timeline.read_bytes().decode().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue
