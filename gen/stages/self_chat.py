"""``self_chat``: multi-turn conversations where one model plays both sides (UltraChat, Baize).

A conversation opens with the record's instruction when it has one (Baize seeds its self-chats
with real questions); otherwise the model, playing the user, writes the opening message about a
topic (UltraChat's user simulator). Then it alternates: the assistant answers through the model's
chat template; the user simulator, given the topic or persona from the spec and the conversation
so far, writes the user's next message, or the end marker when the user would stop. The
conversation ends at the marker or after ``turns`` exchanges; the record's ``messages`` hold it.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from gen.records import Record, drop, instruction_of
from gen.sampling import Sampling
from gen.stages.base import Stage, StageConfig, StageContext
from gen.stages.common import failure, layered_sampling

END_MARKER = "[END]"  # what the user simulator writes to end the conversation (the prompt says so)
# Small models label the message they write as the transcript in the prompt does, though asked not to.
_USER_LABEL = re.compile(r"^user\s*:\s*", re.IGNORECASE)


class SelfChatConfig(StageConfig):
    type: Literal["self_chat"] = "self_chat"
    turns: int = Field(3, ge=1)
    """Most user/assistant exchanges per conversation (UltraChat's dialogues average ~3.8; a
    smaller default keeps conversations within a small model's context)."""
    topics: list[str] = []
    """Topics, one drawn per record, for the user to talk about (UltraChat's topic lists)."""
    personas: list[str] = []
    """Personas, one drawn per record, for the user to play."""
    seed: int = 0
    """Seeds the topic and persona drawn for each record, so reruns draw the same ones."""
    assistant_system_prompt: str | None = None
    """An optional system turn for the assistant side (not stored in ``messages``)."""
    user_sampling: Sampling | None = None
    """Overrides for the user simulator (``sampling`` covers the assistant)."""


# The user side should vary from conversation to conversation; the assistant follows the spec.
USER_SAMPLING = Sampling(temperature=1.0, top_p=0.95, max_tokens=256)
ASSISTANT_SAMPLING = Sampling()


def user_message(generation: str) -> tuple[str, bool]:
    """The simulated user's message and whether it ends the conversation.

    The end marker anywhere ends it; text before the marker is the user's farewell, kept only if it
    says something. A leading "User:" label is not part of the message.
    """
    text = _USER_LABEL.sub("", generation.strip())
    if END_MARKER in text:
        return text.split(END_MARKER, 1)[0].strip(), True
    return text, False


class SelfChat(Stage):
    name = "self_chat"
    prompts = {"self_chat_user": {
        "topic": "the sea", "persona": "a retired engineer",
        "conversation": [{"role": "user", "content": "Why is the sea salty?"},
                         {"role": "assistant", "content": "Rivers carry dissolved minerals into it."}]}}

    def __init__(self, config: SelfChatConfig, ctx: StageContext):
        super().__init__(config, ctx)
        self.user_sampling = layered_sampling(ctx, USER_SAMPLING, config.user_sampling)
        self.sampling = layered_sampling(ctx, ASSISTANT_SAMPLING, config.sampling)
        self.user_template = self.prompt("self_chat_user")

    async def process(self, record: Record) -> list[Record]:
        rng = random.Random(f"{self.config.seed}/{record['id']}")
        topic = rng.choice(self.config.topics) if self.config.topics else None
        persona = rng.choice(self.config.personas) if self.config.personas else None
        opening = instruction_of(record).strip()
        if not opening and not topic:
            return [drop(dict(record), self.name, "no_topic")]
        conversation: list[dict[str, str]] = []
        ended_by = "max_turns"
        last = None
        truncated_turns = 0
        for turn in range(self.config.turns):
            if turn == 0 and opening:
                message, ends = opening, False
            else:
                prompt = self.user_template.render(topic=topic, persona=persona, conversation=conversation)
                [last] = await self.ctx.engine.chat([{"role": "user", "content": prompt}],
                                                    {**self.user_sampling, "n": 1},
                                                    key=f"{record['id']}/{self.name}/{turn}/user")
                if reason := failure(last):
                    return [self.finish(record, conversation, last, topic, persona, ended_by, truncated_turns,
                                        drop_reason=reason)]
                truncated_turns += last.finish_reason == "length"
                message, ends = user_message(last.text)
            if ends or not message:
                ended_by = "end_signal" if ends else "empty_user_turn"
                break
            conversation.append({"role": "user", "content": message})
            system = ([{"role": "system", "content": self.config.assistant_system_prompt}]
                      if self.config.assistant_system_prompt else [])
            [last] = await self.ctx.engine.chat(system + conversation, {**self.sampling, "n": 1},
                                                key=f"{record['id']}/{self.name}/{turn}/assistant")
            if reason := failure(last):
                return [self.finish(record, conversation, last, topic, persona, ended_by, truncated_turns,
                                    drop_reason=reason)]
            truncated_turns += last.finish_reason == "length"
            conversation.append({"role": "assistant", "content": last.text})
        while conversation and conversation[-1]["role"] != "assistant":
            conversation.pop()
        return [self.finish(record, conversation, last, topic, persona, ended_by, truncated_turns,
                            drop_reason=None if conversation else "no_exchange")]

    def finish(self, record, conversation, completion, topic, persona, ended_by, truncated_turns,
               drop_reason: str | None) -> Record:
        made = self.derive(record, conversation, completion=completion, template=self.user_template,
                           self_chat_turns=sum(m["role"] == "assistant" for m in conversation),
                           self_chat_ended_by=ended_by, self_chat_truncated_turns=truncated_turns,
                           topic=topic, persona=persona)
        if drop_reason:
            drop(made, self.name, drop_reason, detail=getattr(completion, "error", None))
        return made
