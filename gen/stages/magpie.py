"""``magpie``: instructions written by an aligned model from nothing but its own user-turn prefix
(Magpie, Xu et al. 2024).

The model is given only the text its chat template puts before a user's words (e.g.
``<|im_start|>user\\n``) and continues it: what it writes is a user instruction, drawn from what
it learnt to expect there. Then it answers that instruction through the normal chat template.
A model whose template has no user-turn prefix cannot do this and is refused before any work
(``pre_query`` supplies one by hand).

Work item ``n`` (``n < target``) has work key ``magpie/<n>``: a resumed run makes exactly the
items not yet committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from gen.prompts import PromptTemplate
from gen.records import Record, content_id, drop
from gen.sampling import Sampling
from gen.stages.base import SourceStage, StageConfig, StageContext, WorkItem
from gen.stages.common import failure, layered_sampling

if TYPE_CHECKING:
    from gen.sink import CommittedWork


class MagpieConfig(StageConfig):
    type: Literal["magpie"] = "magpie"
    target: int = Field(1_000_000, ge=1)
    """Instruction/response pairs to make (the paper's Magpie-Pro release has 1M)."""
    pre_query: str | None = None
    """The user-turn prefix to continue; default: the one the model's chat template produces."""
    instruction_sampling: Sampling | None = None
    """Overrides for writing the instruction (``sampling`` covers the response)."""


# The paper samples instructions hot and wide for diversity, and answers greedily.
INSTRUCTION_SAMPLING = Sampling(temperature=1.0, top_p=0.99, max_tokens=512)
RESPONSE_SAMPLING = Sampling(temperature=0.0)


class MagpieRefused(ValueError):
    """The model cannot be used for Magpie: its chat template has no user-turn prefix."""


class Magpie(SourceStage):
    needs_seeds = False  # the model writes the instructions from nothing but the template
    name = "magpie"

    def __init__(self, config: MagpieConfig, ctx: StageContext):
        super().__init__(config, ctx)
        self.instruction_sampling = layered_sampling(ctx, INSTRUCTION_SAMPLING, config.instruction_sampling)
        self.sampling = layered_sampling(ctx, RESPONSE_SAMPLING, config.sampling)
        self.pre_query = config.pre_query or (ctx.engine.user_turn_prefix if ctx.engine else None)
        if not self.pre_query:
            raise MagpieRefused(
                f"magpie: the chat template of {ctx.model!r} has no user-turn prefix (no chat template, "
                "or one that puts nothing before the user's words), so there is nothing for the model "
                "to continue into an instruction. Use a chat model, or set the stage's pre_query to "
                "the text that opens a user turn for this model.")
        # The pre-query is this method's whole prompt: its hash goes in the lineage.
        self.template = PromptTemplate.from_text("pre_query", self.pre_query)

    async def generate(self, seeds: list[Record], done: CommittedWork) -> AsyncIterator[WorkItem]:
        committed = done.keys
        todo = (n for n in range(self.config.target) if f"{self.name}/{n}" not in committed)
        running: set[asyncio.Task] = set()
        try:
            while True:
                for n in todo:
                    running.add(asyncio.create_task(self.make(n)))
                    if len(running) >= self.ctx.engine.capacity:
                        break
                if not running:
                    return
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    yield [task.result()]
        finally:
            for task in running:
                task.cancel()

    async def make(self, n: int) -> Record:
        item = {"id": content_id(self.name, n), "work_key": f"{self.name}/{n}", "seed_id": None,
                "method": None, "metadata": {}}
        [written] = await self.ctx.engine.complete(self.pre_query, {**self.instruction_sampling, "n": 1},
                                                   key=f"{item['work_key']}/instruction")
        instruction = written.text.strip()
        asked = [{"role": "user", "content": instruction}]

        def made(messages, completion, **metadata) -> Record:
            record = self.derive(item, messages, index=n, completion=completion, template=self.template,
                                 pre_query=self.pre_query, **metadata)
            record["work_key"] = item["work_key"]
            return record

        if reason := failure(written):
            return drop(made(asked, written), self.name, reason, detail=written.error)
        if written.finish_reason == "length":
            return drop(made(asked, written), self.name, "truncated_instruction")
        if not instruction:
            return drop(made(asked, written), self.name, "empty_instruction")
        [answer] = await self.ctx.engine.chat(asked, {**self.sampling, "n": 1}, key=f"{item['work_key']}/response")
        answered = [*asked, {"role": "assistant", "content": answer.text}]
        if reason := failure(answer):
            return drop(made(answered, answer), self.name, reason, detail=answer.error)
        return made(answered, answer, instruction_sampling=self.instruction_sampling)
