"""Filters: keep, or drop with a reason. To add one: write its module (a ``FilterConfig`` subclass
with a ``type: Literal[...]`` and a ``Filter`` subclass), then list it in ``FILTERS`` below.
Heavy libraries (fastText, datasketch, Ray) are imported by the filter that needs them, when built."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from filters.base import Drop, Filter, FilterChain, FilterConfig, Verdict
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

FILTERS: dict[type[FilterConfig], type[Filter]] = {
    InstructionRulesConfig: InstructionRules,
    ResponseRulesConfig: ResponseRules,
    RefusalConfig: Refusal,
    GopherRepetitionConfig: GopherRepetition,
    GopherQualityConfig: GopherQuality,
    LanguageIdConfig: LanguageId,
    DedupConfig: Dedup,
    DecontaminationConfig: Decontamination,
}

FilterSpec = Annotated[Union[tuple(FILTERS)], Field(discriminator="type")]  # noqa: UP007


def build_chain(configs: list[FilterConfig]) -> FilterChain:
    return FilterChain([FILTERS[type(c)](c) for c in configs])


__all__ = ["FILTERS", "Drop", "Filter", "FilterChain", "FilterConfig", "FilterSpec", "Verdict", "build_chain"]
