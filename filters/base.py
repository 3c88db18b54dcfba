"""The contract every filter follows.

A filter looks at a batch of records and says, per record, keep (``None``) or drop
(:class:`Drop`, with a snake_case reason code and the evidence). It may add annotation columns to
the records it sees (``lang``, ``lang_score``, ``minhash``, ``metadata``), and touches nothing
else. The base class does the bookkeeping: it counts kept records and drops per reason, and marks
dropped records so the sink routes them to ``rejected/`` with ``drop_filter``, ``drop_reason`` and
``drop_evidence``. Nothing a filter drops is lost.

Filters run in the driver at commit time, in commit order, so "the first committed record wins"
holds for stateful filters (dedup) and their state always matches the committed shards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gen.records import Record, drop


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


Verdict = Drop | None


class FilterConfig(BaseModel):
    """Base of every filter's typed config; subclasses add ``type: Literal[...]`` and thresholds."""

    model_config = ConfigDict(extra="forbid")


class Filter(ABC):
    name: ClassVar[str]

    def __init__(self, config: FilterConfig):
        self.config = config
        self.kept = 0
        self.dropped: Counter[str] = Counter()

    @abstractmethod
    def judge(self, records: list[Record]) -> list[Verdict]:
        """One verdict per record, in order."""

    def observe_committed(self, records: list[Record]) -> None:
        """Learn from records committed by an earlier (or interrupted) run without judging them.

        Stateful filters override this (dedup loads their signatures); others ignore it.
        """

    def __call__(self, records: list[Record]) -> tuple[list[Record], list[Record]]:
        """Split ``records`` into (kept, dropped), counting and marking the dropped ones."""
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
    """Filters applied in spec order; a record dropped by one is not shown to the next."""

    def __init__(self, filters: list[Filter]):
        self.filters = filters

    def __call__(self, records: list[Record]) -> tuple[list[Record], list[Record]]:
        rejected: list[Record] = []
        for f in self.filters:
            if not records:
                break
            records, dropped = f(records)
            rejected.extend(dropped)
        return records, rejected

    def observe_committed(self, records: list[Record]) -> None:
        for f in self.filters:
            f.observe_committed(records)

    def close(self) -> None:
        for f in self.filters:
            f.close()

    def stats(self) -> dict[str, Any]:
        return {f.name: f.stats() for f in self.filters}
