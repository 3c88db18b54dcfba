"""The methods on a real model's text (SmolLM2-135M-Instruct on vLLM's CPU backend).

Each test asserts a property that real instruction-following text has and noise cannot: greedy
answers state the fact asked for, Self-Instruct's continued lists parse into instructions, Magpie
writes English questions, answers are English and mostly pass the quality rules. Shares of a
small sample, not exact strings (beyond the facts), so a retrained or requantized model still
passes; the thresholds sit well under what this model does (measured figures beside them).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from stage_fakes import Committed, collect, context

from filters import build_chain
from filters.langid import LanguageId, LanguageIdConfig
from filters.quality import (
    GopherQualityConfig,
    GopherRepetitionConfig,
    InstructionRules,
    InstructionRulesConfig,
    RefusalConfig,
)
from gen.records import is_dropped
from gen.seeds import SeedReader
from gen.stages.magpie import Magpie, MagpieConfig
from gen.stages.respond import Respond, RespondConfig
from gen.stages.self_instruct import SelfInstruct, SelfInstructConfig, parse_instruction_list
from tests.conftest import REPO

FACTS = {
    "What is the capital of France?": "paris",
    "What is the chemical symbol for gold?": "au",
}  # a 135M model: it gets these right, not much more ("the largest planet ... is Neptune")


def english_share(records: list[dict], text: str) -> float:
    language_id = LanguageId(LanguageIdConfig(text=text))
    language_id.judge(records)
    return sum(r.get("lang") == "en" for r in records) / len(records)


def example_seeds() -> list[dict]:
    return list(SeedReader(paths=[str(REPO / "examples" / "seeds.jsonl")]))


@pytest.fixture(scope="module")
def answered(smollm2_pool) -> list[dict]:
    """Half the example seeds answered as the quickstart answers them, a little shorter."""
    stage = Respond(RespondConfig(), context(smollm2_pool, temperature=0.7, top_p=0.95, max_tokens=80))

    async def answer_all():
        return await asyncio.gather(*(stage.process(seed) for seed in example_seeds()[:16]))
    return [record for records in asyncio.run(answer_all()) for record in records]


def test_greedy_answers_state_the_fact(smollm2_pool):
    async def ask_all():
        return await asyncio.gather(*(smollm2_pool.chat([{"role": "user", "content": question}],
                                                        {"temperature": 0.0, "max_tokens": 40}, key=question)
                                      for question in FACTS))
    for (question, fact), [answer] in zip(FACTS.items(), asyncio.run(ask_all()), strict=True):
        assert fact in answer.text.lower().replace(".", " ").split(), (question, answer.text)


def test_answers_are_english_and_mostly_pass_the_quality_rules(answered):
    assert not any(is_dropped(r) for r in answered)
    assert english_share(answered, "response") >= 0.8  # measured: 31 of the quickstart's 32 answers
    chain = build_chain([RefusalConfig(), GopherRepetitionConfig(), GopherQualityConfig()])
    kept, rejected = chain([dict(r) for r in answered])
    # measured: 29 of the quickstart's 32 answers (128 tokens); 10 of these 16 (80 tokens) in one run
    assert len(kept) >= 0.5 * len(answered), [(r["_drop"]["reason"], r["messages"][-1]["content"][:200])
                                              for r in rejected]


def test_self_instruct_lists_parse_into_instructions_that_pass_the_papers_rules(smollm2_pool):
    stage = SelfInstruct(SelfInstructConfig(target=40, instances=False, sampling={"max_tokens": 96}),
                         context(smollm2_pool))
    pool = stage.restore_pool(example_seeds(), Committed())

    async def lists():
        return await asyncio.gather(*(stage.request_list(pool, request) for request in range(6)))
    replies = asyncio.run(lists())
    parsed = [parse_instruction_list(reply.completion.text) for reply in replies]
    # a real model continues the numbered list: most replies hold several items
    assert sum(len(items) >= 2 for items in parsed) >= 0.5 * len(replies), [r.completion.text for r in replies]
    candidates = [{"messages": [{"role": "user", "content": text}]} for items in parsed for text in items]
    verdicts = InstructionRules(InstructionRulesConfig()).judge(candidates)
    assert sum(v is None for v in verdicts) >= 0.5 * len(candidates), json.dumps(
        [(c["messages"][0]["content"], v and v.reason) for c, v in zip(candidates, verdicts)], indent=1)


def test_magpie_writes_english_questions(smollm2_pool):
    config = MagpieConfig(target=8, instruction_sampling={"max_tokens": 64}, sampling={"max_tokens": 48})
    records = asyncio.run(collect(Magpie(config, context(smollm2_pool)).generate([], Committed())))
    assert smollm2_pool.user_turn_prefix.startswith("<|im_start|>system\n")  # the template's default system turn
    written = [r for r in records if r["messages"][0]["content"].strip()]
    assert len(written) >= 6, [r["messages"][0]["content"] for r in records]
    # measured: 40 of 40 in examples/magpie
    assert english_share(written, "instruction") >= 0.75, [r["messages"][0]["content"] for r in written]
