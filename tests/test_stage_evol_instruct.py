"""evol_instruct: the elimination rules on known model outputs, rounds and ops, and a real-engine run."""

from __future__ import annotations

import asyncio
import itertools

from stage_fakes import ScriptedEngine, completion, context

from gen.records import is_dropped
from gen.stages.evol_instruct import (
    EvolInstruct,
    EvolInstructConfig,
    is_apology,
    only_punctuation_and_stop_words,
    parse_equality,
    scaffolding_leak,
)

SEED = {"id": "s1", "work_key": "s1", "seed_id": "s1", "method": "seed", "round": None,
        "messages": [{"role": "user", "content": "List three fruits."}], "metadata": {}}


def test_elimination_rules_on_known_outputs():
    assert scaffolding_leak("#Rewritten Prompt#: List three fruits") == "#Rewritten Prompt#"
    assert scaffolding_leak("Here is the rewritten prompt: list fruits") == "rewritten prompt"
    assert scaffolding_leak("List three tropical fruits and their origin.") is None
    assert is_apology("Sorry, I cannot help with that.", 80)
    assert not is_apology("Sorry " + "word " * 90, 80)
    assert only_punctuation_and_stop_words("... and the, of it?!")
    assert not only_punctuation_and_stop_words("Mangoes come from South Asia.")
    assert parse_equality(" Not Equal") is False
    assert parse_equality("Equal.") is True
    assert parse_equality("They differ") is None


def run(replies: dict[str, str], config: EvolInstructConfig, engine_log: list | None = None,
        **spec_sampling) -> list[dict]:
    def reply(messages):
        text = messages[-1]["content"]
        for marker, answer in replies.items():
            if marker in text:
                return completion(answer() if callable(answer) else answer)
        return completion("Mangoes, papayas and guavas all grow in the tropics.")

    engine = ScriptedEngine(reply)
    if engine_log is not None:
        engine_log.append(engine)
    stage = EvolInstruct(config, context(engine, **spec_sampling))
    return asyncio.run(stage.process(SEED))


def evolving_replies() -> dict:
    step = itertools.count(1)
    return {"Make it harder": lambda: f"List {next(step)} tropical fruits, each with its country of origin.",
            "brand-new prompt": lambda: f"Name {next(step)} rare berries that grow in Arctic regions.",
            "Are they equal": "Not Equal"}


def test_each_round_keeps_evol_round_and_op_and_evolves_the_last_survivor():
    records = run(evolving_replies(), EvolInstructConfig(rounds=3))
    assert [r["metadata"]["evol_round"] for r in records] == [1, 2, 3]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(r["metadata"]["evol_op"] in EvolInstructConfig().ops for r in records)
    assert all(not is_dropped(r) and r["messages"][-1]["role"] == "assistant" for r in records)
    assert records[1]["metadata"]["evolved_from"] == records[0]["messages"][0]["content"]
    assert records[0]["method"] == "seed>evol_instruct" and records[0]["template"] in ("evol_in_depth", "evol_in_breadth")
    again = run(evolving_replies(), EvolInstructConfig(rounds=3))
    assert [r["metadata"]["evol_op"] for r in again] == [r["metadata"]["evol_op"] for r in records]


def test_rewrites_judgements_and_answers_get_their_own_sampling():
    engines: list = []
    run(evolving_replies(), EvolInstructConfig(rounds=2, evolve_sampling={"max_tokens": 64}), engines,
        temperature=0.7, max_tokens=200)
    [engine] = engines

    def asked(*markers):
        return lambda messages: any(marker in messages[-1]["content"] for marker in markers)
    rewrites = engine.sampling_of(asked("Make it harder", "brand-new prompt"))
    judgements = engine.sampling_of(asked("Are they equal"))
    answers = engine.sampling_of(lambda m: not asked("Make it harder", "brand-new prompt", "Are they equal")(m))
    assert rewrites == [{"temperature": 1.0, "max_tokens": 64, "n": 1}] * 2  # WizardLM: ChatGPT's default
    assert judgements == [{"temperature": 0.0, "max_tokens": 8, "n": 1}] * 2
    assert answers == [{"temperature": 0.7, "max_tokens": 200, "n": 1}] * 2
    # The structured mode sends the two answers as a choice, under vLLM's name.
    engines.clear()
    run(evolving_replies(), EvolInstructConfig(rounds=1, ops=["deepen"], structured_equality=True), engines)
    assert engines[0].sampling_of(asked("Are they equal")) == [
        {"temperature": 0.0, "max_tokens": 8, "n": 1, "structured_outputs": {"choice": ["Equal", "Not Equal"]}}]


def test_eliminated_evolutions_go_to_rejected_with_their_rule():
    cases = {
        "copies_prompt_scaffolding": {"Make it harder": "#Rewritten Prompt#: list fruits",
                                      "brand-new prompt": "The given prompt asks about fruit"},
        "response_is_apology": {"Make it harder": "List fruits that grow on Mars.", "brand-new prompt": "Name Mars fruits.",
                                "Mars": "Sorry, I can't do that."},
        "response_only_stop_words": {"Make it harder": "List fruits of Mars.", "brand-new prompt": "Mars fruits?",
                                     "Mars": "... the, of and it?"},
        "no_information_gain": {"Make it harder": "List three fruits.", "brand-new prompt": "List three fruits."},
    }
    for reason, replies in cases.items():
        records = run(replies, EvolInstructConfig(rounds=2))
        assert [r["_drop"]["reason"] for r in records] == [reason, reason], reason
        assert all(r["messages"][0]["content"] != SEED["messages"][0]["content"] or reason == "no_information_gain"
                   for r in records)
    judged_equal = run({"Make it harder": "List 3 fruits.", "Are they equal": "Equal"},
                       EvolInstructConfig(rounds=2, ops=["deepen"]))
    assert [r["_drop"]["reason"] for r in judged_equal] == ["no_information_gain"] * 2
    assert judged_equal[0]["_drop"]["evidence"]["judged_by"] == "model"
    # a failed round leaves the next one to start again from the last surviving instruction
    assert all(r["metadata"]["evolved_from"] == "List three fruits." for r in judged_equal)


def test_end_to_end_on_the_tiny_model(engine_pool):
    stage = EvolInstruct(EvolInstructConfig(rounds=2), context(engine_pool, max_tokens=32))
    records = asyncio.run(stage.process(SEED))
    assert len(records) == 2
    for record in records:
        assert record["stage"] == "evol_instruct" and record["metadata"]["evol_op"]
        assert record["template_hash"] and record["round"] in (1, 2)
