"""Labelled answers for measuring the quality rules: good ones, and degenerate ones made from them.

GOOD: ``tests/data/good_answers.jsonl``, hand-written answers of the shapes instruction data has
(code, LaTeX, markdown tables, lists, one-word labels, URLs, a long instruction with its input,
instructions that hold Self-Instruct's blacklisted words as a user would use them), read as
``sdg filter`` reads an Alpaca file; ``benchmarks/bench_rules.py`` adds the Self-Instruct seed
tasks' human-written answers.

BAD: the degenerate outputs a model writes, made deterministically from the good answers, one per
good answer and kind (:data:`DEGENERATE_KINDS`). Only ``truncated`` carries a finish reason; the
others have none, as in a dataset read from a file, so the content rules alone must catch them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from gen.records import Record, instruction_of, response_of
from gen.seeds import SeedReader

GOOD_ANSWERS = Path(__file__).parent / "data" / "good_answers.jsonl"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I am unable to answer this question.",
    "I apologize, but I cannot provide that information.",
    "Sorry, but I can't assist with this request.",
]


def read_good(*paths: Path) -> list[Record]:
    """Records of Alpaca or Self-Instruct files, as ``sdg filter`` reads them."""
    return list(SeedReader([str(path) for path in paths]))


def with_response(record: Record, response: str, kind: str, finish_reason: str | None = None) -> Record:
    """``record`` answered by ``response`` instead, with an id of its own (``<id>/<kind>``)."""
    messages = [m for m in record["messages"] if m["role"] != "assistant"]
    return {**record, "id": f"{record['id']}/{kind}", "finish_reason": finish_reason,
            "messages": [*messages, {"role": "assistant", "content": response}]}


def _pick(record: Record, choices: int) -> int:
    """A choice that varies between records and never between runs (ids are content hashes)."""
    return int(record["id"][:8], 16) % choices


def _first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip().splitlines()[0].strip())[0]


def truncated(record: Record) -> Record:
    """Cut mid-word at 60% of the answer by the length limit (finish reason ``length``)."""
    answer = response_of(record)
    return with_response(record, answer[: max(1, int(len(answer) * 0.6))], "truncated", "length")


def loop_sentence(record: Record) -> Record:
    """The first sentence, again and again: the classic greedy-decoding loop."""
    sentence = _first_sentence(response_of(record))
    return with_response(record, " ".join([sentence] * max(6, 400 // max(len(sentence), 1))), "loop_sentence")


def loop_tail(record: Record) -> Record:
    """The answer, then stuck on its last line until the token budget ran out."""
    answer = response_of(record).rstrip()
    last = answer.splitlines()[-1]
    return with_response(record, answer + ("\n" + last) * 12, "loop_tail")


def loop_numbered(record: Record) -> Record:
    """A list whose items differ only by their number."""
    sentence = _first_sentence(response_of(record))
    return with_response(record, "\n".join(f"{n}. {sentence}" for n in range(1, 13)), "loop_numbered")


def loop_phrase(record: Record) -> Record:
    """A few words of the answer repeated without end ("the the the", "and then and then")."""
    words = response_of(record).split()[:3]
    return with_response(record, " ".join(words * 30), "loop_phrase")


def empty(record: Record) -> Record:
    return with_response(record, "", "empty")


def whitespace(record: Record) -> Record:
    return with_response(record, " \n\t\n ", "whitespace")


def punctuation(record: Record) -> Record:
    return with_response(record, ["...", "?", "```\n```", "- - -", ":"][_pick(record, 5)], "punctuation")


def echo(record: Record) -> Record:
    """The instruction (with its input) given back as the answer."""
    return with_response(record, instruction_of(record), "echo")


def refusal(record: Record) -> Record:
    return with_response(record, REFUSALS[_pick(record, len(REFUSALS))], "refusal")


DEGENERATE_KINDS: dict[str, Callable[[Record], Record]] = {
    "truncated": truncated,
    "loop_sentence": loop_sentence,
    "loop_tail": loop_tail,
    "loop_numbered": loop_numbered,
    "loop_phrase": loop_phrase,
    "empty": empty,
    "whitespace": whitespace,
    "punctuation": punctuation,
    "echo": echo,
    "refusal": refusal,
}


def degenerate(good: list[Record]) -> list[tuple[str, Record]]:
    """(kind, record) for every good answer and every kind."""
    return [(kind, make(record)) for record in good for kind, make in DEGENERATE_KINDS.items()]
