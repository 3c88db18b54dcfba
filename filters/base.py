"""The contract every filter follows.

A filter looks at a batch of records and says, per record, keep (``None``) or drop
(:class:`Drop`, with a snake_case reason code and the evidence). It may add annotation columns to
the records it sees (``lang``, ``lang_score``, ``minhash``, ``metadata``), and touches nothing
else. The base class does the bookkeeping: it counts kept records and drops per reason, and marks
dropped records so the sink routes them to ``rejected/`` with ``drop_filter``, ``drop_reason`` and
``drop_evidence``. Nothing a filter drops is lost.

Filters run in the driver at commit time, in commit order, so "the first committed record wins"
holds for stateful filters (dedup). A stateful filter remembers what it keeps, so the chain runs it
after every stateless one: it sees only records nothing else will drop, its state equals what
``data/`` holds, and which records are kept does not depend on the order filters are listed in.
A stateful filter whose state is lost (an index actor died or stopped answering) raises
:class:`StateLost`; the chain rebuilds it from the committed shards and judges the batch again.

A filter's work that depends on each record alone is its :meth:`Filter.prepare` (dedup: the
record's shingles and MinHash signature); judging then reads what it left on the record (dedup:
asks the index, in commit order). The chain prepares a batch before judging it. ``sdg filter``
does the stateless part on Ray Data workers across the cluster, before the driver
(:mod:`filters.parallel`): the stateless filters judge there, and the stateful ones prepare there,
so the driver's chain finds its records prepared and only judges.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gen.records import Record, drop

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


Verdict = Drop | None


class StateLost(RuntimeError):
    """A stateful filter's state is gone (its index actor died or timed out): rebuild, then judge again."""


class FilterConfig(BaseModel):
    """Base of every filter's typed config; subclasses add ``type: Literal[...]`` and thresholds."""

    model_config = ConfigDict(extra="forbid")


class Filter(ABC):
    name: ClassVar[str]
    stateful: ClassVar[bool] = False
    """Remembers what it keeps (dedup): judged after all stateless filters, rebuilt when lost."""
    committed_columns: ClassVar[tuple[str, ...]] = ()
    """The shard columns :meth:`observe_committed` needs: a resume reads those, nothing else."""

    def __init__(self, config: FilterConfig):
        self.config = config
        self.kept = 0
        self.dropped: Counter[str] = Counter()

    @classmethod
    def prepare(cls, config: FilterConfig, records: list[Record]) -> None:
        """Annotate ``records`` with what judging them needs and depends on each record alone,
        without state (no index, no actor): a stateful filter's CPU work per record goes here, so
        it can run on any worker. Leaves a record prepared already as it is."""

    @abstractmethod
    def judge(self, records: list[Record]) -> list[Verdict]:
        """One verdict per record, in order, of records :meth:`prepare` has seen."""

    def observe_committed(self, records: list[Record]) -> None:
        """Learn from records committed by an earlier (or interrupted) run without judging them.

        Stateful filters override this (dedup loads their signatures); others ignore it.
        """

    def reset(self) -> None:
        """Start the state afresh (after :class:`StateLost`), before ``observe_committed``."""

    def __call__(self, records: list[Record]) -> tuple[list[Record], list[Record]]:
        """Split ``records`` into (kept, dropped), counting and marking the dropped ones."""
        self.prepare(self.config, records)
        verdicts = self.judge(records)
        kept, dropped = [], []
        for record, verdict in zip(records, verdicts, strict=True):
            if verdict is None:
                kept.append(record)
            else:
                self.dropped[verdict.reason] += 1
                dropped.append(drop(record, self.name, verdict.reason, **verdict.evidence))
        self.kept += len(kept)
        return kept, dropped

    def close(self) -> None:
        """Release actors or files; called once at the end of a run."""

    def stats(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(self.dropped)}


class FilterChain:
    """Stateless filters in spec order, then stateful ones; a record dropped by one is not shown
    to the next.

    ``committed(columns)`` gives the records already committed to ``data/``, those columns only, in
    batches: what a resumed run or a lost state is rebuilt from.
    """

    def __init__(self, filters: list[Filter],
                 committed: Callable[[list[str]], Iterable[list[Record]]] = lambda columns: ()):
        self.filters = sorted(filters, key=lambda f: f.stateful)  # stable: spec order within each kind
        self.committed = committed

    def __call__(self, records: list[Record]) -> tuple[list[Record], list[Record]]:
        rejected: list[Record] = []
        for f in self.filters:
            if not records:
                break
            try:
                records, dropped = f(records)
            except StateLost as lost:
                log.warning("%s lost its state (%s): rebuilding it from the committed shards", f.name, lost)
                f.reset()
                self.reload([f])
                records, dropped = f(records)
            rejected.extend(dropped)
        return records, rejected

    def reload(self, filters: list[Filter] | None = None) -> None:
        """Stateful ``filters`` (default: all) learn the committed records, a batch at a time."""
        stateful = [f for f in (self.filters if filters is None else filters) if f.stateful]
        if not stateful:
            return
        for batch in self.committed(sorted({c for f in stateful for c in f.committed_columns})):
            for f in stateful:
                f.observe_committed(batch)

    def close(self) -> None:
        for f in self.filters:
            f.close()

    def stats(self) -> dict[str, Any]:
        return {f.name: f.stats() for f in self.filters}
