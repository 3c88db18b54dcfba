"""The contract every generation stage follows.

A stage turns records into records. Three kinds:

* :class:`Stage` (a map stage: ``respond``, ``evol_instruct``, ``self_chat``, ``template``) gets
  one record and returns the records it makes from it, possibly none, possibly several; a record it
  rejects (unparseable output, an elimination rule, a prompt too long for the model) is returned
  marked with :func:`gen.records.drop` so it lands in ``rejected/``, never silently lost.
* :class:`GroupStage` (``pairs``) is a map stage that gets all the records of one work item at
  once (the answers ``respond`` made with ``n > 1``), to compare them.
* :class:`SourceStage` (``self_instruct``, ``magpie``) stands first in a spec and yields new work
  items from the whole seed set, e.g. a growing instruction pool. A work item is a list of records
  sharing one ``work_key`` (a task and all its instances): they are committed together or not at
  all, so a resumed run never counts half a work item as done.

Stages talk to the model only through ``ctx.engine`` (the run's shared vLLM replicas), so a spec
with five stages still loads the model once per replica. Everything the run knows that a stage
may need is in :class:`StageContext`; a stage touches nothing else.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gen.prompts import PromptTemplate
from gen.records import Record, content_id
from gen.sampling import Sampling

if TYPE_CHECKING:
    from cluster.engine import Completion, EnginePool
    from gen.sink import CommittedWork


WorkItem = list[Record]
"""Records committed together under one ``work_key``: a seed, or what a source stage made at once."""


class StageConfig(BaseModel):
    """Base of every stage's typed config; subclasses add ``type: Literal[...]`` and settings."""

    model_config = ConfigDict(extra="forbid")

    sampling: Sampling | None = None
    """vLLM SamplingParams fields that override the spec's ``sampling`` for this stage only."""
    model: str | None = None
    """The ``name`` of the engine (``models:``) this stage runs on; default: the first."""


@dataclass
class StageContext:
    engine: EnginePool | None  # the stage's engine; None only when the spec has no LLM stage
    model: str  # its name
    sampling: Sampling  # the spec's sampling section, with the engine's own defaults on top
    prompt_overrides: dict[str, str] = field(default_factory=dict)  # template name -> file path


class Stage(ABC):
    name: ClassVar[str]
    uses_llm: ClassVar[bool] = True
    needs_seeds: ClassVar[bool] = True  # as the first stage: whether the spec must name seeds
    prompts: ClassVar[dict[str, dict[str, Any]]] = {}
    """The prompt templates this stage renders, each with sample values of the variables it passes:
    a spec's override of one is checked by rendering it with them before anything starts."""

    def __init__(self, config: StageConfig, ctx: StageContext):
        self.config = config
        self.ctx = ctx
        self.sampling = ctx.sampling.merged(config.sampling)

    @abstractmethod
    async def process(self, record: Record) -> list[Record]:
        """The records made from ``record`` (kept ones and ones marked dropped)."""

    @classmethod
    def scores_made(cls, config: StageConfig) -> tuple[str, ...]:
        """The ``scores`` this stage puts on records (a judge's aspects), which a ``score`` filter may ask for."""
        return ()

    def prompt(self, name: str) -> PromptTemplate:
        """A prompt template shipped in ``gen/prompts``, or the spec's override of it."""
        if name not in self.prompts:
            raise KeyError(f"{self.name} renders {name!r} but does not declare it in {type(self).__name__}.prompts")
        return PromptTemplate.load(name, self.ctx.prompt_overrides.get(name))

    def derive(
        self,
        parent: Record,
        messages: list[dict[str, str]],
        *,
        index: int = 0,
        completion: Completion | None = None,
        template: PromptTemplate | None = None,
        round: int | None = None,
        sampling: dict[str, Any] | None = None,
        **metadata: Any,
    ) -> Record:
        """A new record made by this stage from ``parent``, with its full lineage.

        The id hashes what determines the record (parent, stage, index, model, sampling), not the
        text the model wrote, so a rerun or a resumed run gives the same ids.
        """
        sampling = self.sampling if sampling is None else sampling
        model = self.ctx.model if self.uses_llm else None
        record: Record = {
            "id": content_id(parent["id"], self.name, index, model, sampling),
            "messages": messages,
            "seed_id": parent.get("seed_id"),
            "method": f"{parent['method']}>{self.name}" if parent.get("method") else self.name,
            "stage": self.name,
            "template": template.name if template else parent.get("template"),
            "template_hash": template.sha256 if template else parent.get("template_hash"),
            "round": parent.get("round") if round is None else round,
            "model": model or parent.get("model"),
            "sampling": json.dumps(sampling, sort_keys=True) if self.uses_llm else parent.get("sampling"),
            "prompt_tokens": (parent.get("prompt_tokens") or 0),
            "completion_tokens": (parent.get("completion_tokens") or 0),
            "finish_reason": parent.get("finish_reason"),
            "created_at": datetime.now(UTC),
            "metadata": {**(parent.get("metadata") or {}), **metadata},
            "work_key": parent["work_key"],
        }
        if completion is not None:
            record["prompt_tokens"] += completion.prompt_tokens
            record["completion_tokens"] += completion.completion_tokens
            record["finish_reason"] = completion.finish_reason
        return record


class GroupStage(Stage):
    """A map stage that sees together the records one work item holds when they reach it (the n
    answers to one instruction), to compare them; it returns the records it makes from them."""

    async def process(self, record: Record) -> list[Record]:
        return await self.process_group([record])

    @abstractmethod
    async def process_group(self, records: list[Record]) -> list[Record]:
        """The records made from ``records`` (kept ones and ones marked dropped)."""


class SourceStage(Stage):
    """A first stage that makes work items from the seed set as a whole."""

    async def process(self, record: Record) -> list[Record]:  # pragma: no cover - contract
        raise TypeError(f"{self.name} must be the first stage of a spec")

    @abstractmethod
    def generate(self, seeds: list[Record], done: CommittedWork) -> AsyncIterator[WorkItem]:
        """Yield new work items (each list with its own ``work_key``) until the stage's target.

        ``done`` holds what earlier, interrupted runs into the same output already committed:
        the stage continues from there (a half-built pool is reloaded, not rebuilt).
        """
