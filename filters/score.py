"""Keep records a judge rated high enough (AlpaGasus's filter): every score the filter names must
be at or above its threshold. The scores come from a ``judge`` stage (the record's ``scores``);
the evidence of a drop is all of them, and which fell short.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from filters.base import Drop, Filter, FilterConfig, Verdict
from gen.records import Record


class ScoreConfig(FilterConfig):
    type: Literal["score"] = "score"
    at_least: dict[str, float] = Field(default_factory=lambda: {"accuracy": 4.5}, min_length=1)
    """Score name -> the lowest kept value. Default: AlpaGasus kept Alpaca responses its judge
    rated at least 4.5 for accuracy on its 0-5 scale (9k of 52k; Chen et al. 2023, Section 2). The
    judge stage's scores are integers, so 4.5 keeps the 5s."""


class Score(Filter):
    name = "score"

    def judge(self, records: list[Record]) -> list[Verdict]:
        return [self._verdict(record.get("scores") or {}) for record in records]

    def _verdict(self, scores: dict[str, float]) -> Verdict:
        missing = sorted(self.config.at_least.keys() - scores.keys())
        if missing:
            return Drop("unscored", {"missing": missing, "scores": scores})
        below = {name: threshold for name, threshold in self.config.at_least.items() if scores[name] < threshold}
        if below:
            return Drop("score_below_threshold", {"scores": scores, "below": below})
        return None
