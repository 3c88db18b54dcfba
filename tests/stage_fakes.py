"""Stand-ins for the engine pool and committed work, so stage logic is tested on known model output."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from cluster.engine import Completion
from gen.sampling import Sampling
from gen.stages.base import StageContext


def completion(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text, finish_reason, prompt_tokens=10, completion_tokens=len(text.split()))


@dataclass(frozen=True)
class Request:
    prompt: object  # the text (``complete``) or the messages (``chat``)
    sampling: dict  # as the stage sent it, so tests can check the settings that reach the engine


class ScriptedEngine:
    """Answers each request with ``reply(prompt)``; records every request it was sent."""

    def __init__(self, reply: Callable[[object], Completion], user_turn_prefix: str | None = "<|im_start|>user\n",
                 capacity: int = 4):
        self.reply = reply
        self.user_turn_prefix = user_turn_prefix
        self.capacity = capacity
        self.max_model_len = 2048
        self.chat_template = None
        self.requests: list[Request] = []

    @property
    def prompts(self) -> list[object]:
        return [request.prompt for request in self.requests]

    def sampling_of(self, wanted: Callable[[object], bool]) -> list[dict]:
        """The sampling settings of the requests whose prompt ``wanted`` picks."""
        return [request.sampling for request in self.requests if wanted(request.prompt)]

    async def complete(self, prompt: str, sampling: dict, key: str) -> list[Completion]:
        return await self._answer(prompt, sampling)

    async def chat(self, messages: list[dict[str, str]], sampling: dict, key: str) -> list[Completion]:
        return await self._answer(messages, sampling)

    async def _answer(self, prompt, sampling: dict) -> list[Completion]:
        self.requests.append(Request(prompt, dict(sampling)))
        await asyncio.sleep(0)  # let other requests interleave, as with the real pool
        return [self.reply(prompt)]


class Committed:
    """What the sink hands a resumed run: committed work keys and records."""

    def __init__(self, records: list[dict] | None = None):
        self._records = records or []

    @property
    def keys(self) -> set[str]:
        return {record["work_key"] for record in self._records}

    def records(self, columns: list[str] | None = None, kinds=("data", "rejected")) -> list[dict]:
        return [{k: v for k, v in record.items() if columns is None or k in columns} for record in self._records]


def context(engine, **sampling) -> StageContext:
    return StageContext(engine=engine, model="scripted", sampling=Sampling(**sampling))


async def collect(work_items) -> list[dict]:
    """The records of a source stage's work items, in order."""
    return [record async for item in work_items for record in item]
