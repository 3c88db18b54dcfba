"""magpie: the pre-query prompt, the refusal of a model with no user-turn prefix, resume by work
key, and a real-engine run."""

from __future__ import annotations

import asyncio

import pytest
from stage_fakes import Committed, ScriptedEngine, collect, completion, context

from gen.records import is_dropped
from gen.stages.magpie import Magpie, MagpieConfig, MagpieRefused


def engine(prefix="<|im_start|>user\n"):
    def reply(prompt):
        if isinstance(prompt, str):
            return completion("How do I bake sourdough bread at home?")
        return completion("Start with an active starter.")
    return ScriptedEngine(reply, user_turn_prefix=prefix)


def test_the_model_gets_only_its_user_turn_prefix_then_answers():
    pool = engine()
    records = asyncio.run(collect(Magpie(MagpieConfig(target=3), context(pool)).generate([], Committed())))
    assert len(records) == 3 and not any(is_dropped(r) for r in records)
    assert [p for p in pool.prompts if isinstance(p, str)] == ["<|im_start|>user\n"] * 3
    assert records[0]["messages"] == [
        {"role": "user", "content": "How do I bake sourdough bread at home?"},
        {"role": "assistant", "content": "Start with an active starter."},
    ]
    assert sorted(r["work_key"] for r in records) == ["magpie/0", "magpie/1", "magpie/2"]
    assert records[0]["metadata"]["pre_query"] == "<|im_start|>user\n"
    # the paper's decoding: instructions hot and wide, answers greedy
    written = pool.sampling_of(lambda p: isinstance(p, str))
    answered = pool.sampling_of(lambda p: isinstance(p, list))
    assert all(s["temperature"] == 1.0 and s["top_p"] == 0.99 and s["max_tokens"] == 512 for s in written)
    assert len(answered) == 3 and all(s["temperature"] == 0.0 for s in answered)


def test_stage_overrides_win_over_the_papers_decoding():
    pool = engine()
    config = MagpieConfig(target=2, instruction_sampling={"max_tokens": 40, "temperature": 0.8},
                          sampling={"max_tokens": 64})
    asyncio.run(collect(Magpie(config, context(pool, temperature=0.5, stop=["###"])).generate([], Committed())))
    [written, *_] = pool.sampling_of(lambda p: isinstance(p, str))
    [answered, *_] = pool.sampling_of(lambda p: isinstance(p, list))
    assert written == {"temperature": 0.8, "top_p": 0.99, "max_tokens": 40, "stop": ["###"], "n": 1}
    assert answered == {"temperature": 0.0, "max_tokens": 64, "stop": ["###"], "n": 1}


def test_a_model_without_a_user_turn_prefix_is_refused_clearly():
    with pytest.raises(MagpieRefused, match="no user-turn prefix"):
        Magpie(MagpieConfig(target=1), context(engine(prefix=None)))
    stage = Magpie(MagpieConfig(target=1, pre_query="USER: "), context(engine(prefix=None)))
    assert stage.pre_query == "USER: "


def test_resume_makes_only_the_missing_items_and_bad_generations_are_dropped():
    done = Committed([{"work_key": "magpie/0"}, {"work_key": "magpie/2"}])
    records = asyncio.run(collect(Magpie(MagpieConfig(target=4), context(engine())).generate([], done)))
    assert sorted(r["work_key"] for r in records) == ["magpie/1", "magpie/3"]
    cut = ScriptedEngine(lambda prompt: completion("How do I", "length"))
    [record] = asyncio.run(collect(Magpie(MagpieConfig(target=1), context(cut)).generate([], Committed())))
    assert record["_drop"]["reason"] == "truncated_instruction"


def test_end_to_end_on_the_tiny_model(engine_pool):
    config = MagpieConfig(target=4, instruction_sampling={"max_tokens": 24})
    records = asyncio.run(collect(Magpie(config, context(engine_pool, max_tokens=24)).generate([], Committed())))
    assert len(records) == 4
    assert all(r["stage"] == "magpie" and r["metadata"]["pre_query"] == engine_pool.user_turn_prefix for r in records)
