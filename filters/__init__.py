"""Filters: keep, or drop with a reason. To add one: write its module (a ``FilterConfig`` subclass
with a ``type: Literal[...]`` and a ``Filter`` subclass), then list it in ``FILTERS`` below.
Heavy libraries (fastText, datasketch, Ray) are imported by the filter that needs them, when built."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Union

from pydantic import Field

from filters.base import Drop, Filter, FilterChain, FilterConfig, StateLost, Verdict
from filters.classifier import Classifier, ClassifierConfig
from filters.decontam import Decontamination, DecontaminationConfig
from filters.dedup import Dedup, DedupConfig
from filters.langid import LanguageId, LanguageIdConfig
from filters.quality import (
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
    InstructionRules,
    InstructionRulesConfig,
    Refusal,
    RefusalConfig,
    ResponseRules,
    ResponseRulesConfig,
)
from filters.score import Score, ScoreConfig
from gen.records import Record

FILTERS: dict[type[FilterConfig], type[Filter]] = {
    InstructionRulesConfig: InstructionRules,
    ResponseRulesConfig: ResponseRules,
    RefusalConfig: Refusal,
    GopherRepetitionConfig: GopherRepetition,
    GopherQualityConfig: GopherQuality,
    LanguageIdConfig: LanguageId,
    ClassifierConfig: Classifier,
    DedupConfig: Dedup,
    DecontaminationConfig: Decontamination,
    ScoreConfig: Score,
}

FilterSpec = Annotated[Union[tuple(FILTERS)], Field(discriminator="type")]  # noqa: UP007


def build_chain(configs: list[FilterConfig],
                committed: Callable[[list[str]], Iterable[list[Record]]] = lambda columns: ()) -> FilterChain:
    """The chain for a spec's ``filters``; ``committed(columns)`` reads back ``data/`` in batches
    (to resume, or rebuild lost state)."""
    return FilterChain([FILTERS[type(c)](c) for c in configs], committed)


def is_stateful(config: FilterConfig) -> bool:
    """Whether the filter of ``config`` remembers what it keeps (judged in commit order, in the driver)."""
    return FILTERS[type(config)].stateful


def prepare(configs: list[FilterConfig], records: list[Record]) -> None:
    """What the filters of ``configs`` need of each of ``records`` before judging them
    (:meth:`Filter.prepare`), done now, wherever this runs."""
    for config in configs:
        FILTERS[type(config)].prepare(config, records)


__all__ = ["FILTERS", "Drop", "Filter", "FilterChain", "FilterConfig", "FilterSpec", "StateLost", "Verdict",
           "build_chain", "is_stateful", "prepare"]
