"""``respond``: answer each record's conversation through the model's chat template.

Alpaca / GPT-4-LLM style: the instruction (with its input) is the user turn; the model's answer
becomes the assistant turn. Works after any stage that leaves a user turn last.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from gen.prompts import PromptTemplate
from gen.records import Record, drop
from gen.stages.base import Stage, StageConfig
from gen.stages.common import failure


class RespondConfig(StageConfig):
    type: Literal["respond"] = "respond"
    system_prompt: str | None = None
    """An optional system turn put before the conversation (not stored in ``messages``)."""


class Respond(Stage):
    name = "respond"

    @cached_property
    def template(self) -> PromptTemplate | None:
        """The model's own chat template is this stage's prompt: its hash goes in the lineage."""
        source = self.ctx.engine.chat_template
        return PromptTemplate.from_text("chat_template", source) if source else None

    async def process(self, record: Record) -> list[Record]:
        conversation = list(record["messages"])
        while conversation and conversation[-1]["role"] == "assistant":
            conversation.pop()  # answer the last user turn afresh
        if not conversation:
            return [drop(dict(record), self.name, "no_user_turn")]
        prompt = conversation
        if self.config.system_prompt:
            prompt = [{"role": "system", "content": self.config.system_prompt}, *conversation]
        completions = await self.ctx.engine.chat(prompt, self.sampling, key=f"{record['id']}/{self.name}")
        out = []
        for index, completion in enumerate(completions):
            answered = conversation + [{"role": "assistant", "content": completion.text}]
            derived = self.derive(record, answered, index=index, completion=completion,
                                  template=self.template)
            if reason := failure(completion):
                drop(derived, self.name, reason, detail=completion.error)
            out.append(derived)
        return out
