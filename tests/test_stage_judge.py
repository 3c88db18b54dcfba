"""judge: what reaches the engine (the rubric's prompt and JSON schema), scores and rationale on
known judge outputs, rejects for what does not parse; the score filter; and, on the real tiny
engine, that structured outputs hold on its output."""

from __future__ import annotations

import asyncio
import json

import pytest
from stage_fakes import ScriptedEngine, completion, context

from filters.score import Score, ScoreConfig
from gen.records import is_dropped
from gen.sampling import Sampling
from gen.stages.judge import RUBRICS, Judge, JudgeConfig, judgement_schema, parse_judgement

ANSWERED = {"id": "r1", "work_key": "s1", "seed_id": "s1", "method": "seed>respond", "model": "generator",
            "messages": [{"role": "user", "content": "What is the capital of France?"},
                         {"role": "assistant", "content": "The capital of France is Paris."}],
            "metadata": {"seed": 1}}


def judged(reply_text: str, config: JudgeConfig = JudgeConfig(), finish_reason: str = "stop",
           record: dict = ANSWERED) -> tuple[dict, ScriptedEngine, Judge]:
    engine = ScriptedEngine(lambda messages: completion(reply_text, finish_reason))
    stage = Judge(config, context(engine, temperature=0.7, max_tokens=64))
    [out] = asyncio.run(stage.process(dict(record)))
    return out, engine, stage


def test_the_rubric_and_its_json_schema_reach_the_engine_greedy_whatever_the_spec_samples():
    out, engine, _ = judged('{"accuracy": 5, "rationale": "Correct."}')
    [request] = engine.requests
    prompt = request.prompt[-1]["content"]
    assert "What is the capital of France?" in prompt and "The capital of France is Paris." in prompt
    assert "scale of 0 to 5" in prompt  # AlpaGasus's rating
    # The method's decoding wins over the spec's sampling; the schema rides along under vLLM's names.
    assert request.sampling["temperature"] == 0.0 and request.sampling["max_tokens"] == 384
    assert request.sampling["structured_outputs"] == {"json": judgement_schema(RUBRICS["alpagasus"], 600)}
    schema = request.sampling["structured_outputs"]["json"]
    assert schema["required"] == ["accuracy", "rationale"]
    assert schema["properties"]["accuracy"] == {"type": "integer", "minimum": 0, "maximum": 5}
    assert schema["properties"]["rationale"] == {"type": "string", "maxLength": 600}
    # A stage's own sampling wins over the method's; structured: false sends no constraint.
    _, engine, _ = judged('{"accuracy": 5, "rationale": ""}', JudgeConfig(
        structured=False, sampling=Sampling(max_tokens=100)))
    assert "structured_outputs" not in engine.requests[0].sampling
    assert engine.requests[0].sampling["max_tokens"] == 100


def test_scores_and_rationale_become_columns_on_the_same_record_with_the_judge_in_metadata():
    out, _, stage = judged('{"accuracy": 4, "rationale": "Right, but terse."}')
    assert not is_dropped(out)
    assert (out["scores"], out["rationale"]) == ({"accuracy": 4}, "Right, but terse.")
    assert out["id"] == "r1" and out["messages"] == ANSWERED["messages"] and out["model"] == "generator"
    judge = out["metadata"]["judge"]
    assert judge["rubric"] == "alpagasus" and judge["template"] == "judge_alpagasus" and judge["template_hash"]
    assert out["metadata"]["seed"] == 1
    # Its tokens are counted apart from the generation's (the record's own token columns).
    assert (stage.prompt_tokens, stage.completion_tokens) == (10, 6)  # the fake: 10, one per word


def test_ultrafeedback_rates_four_aspects():
    reply = {"instruction_following": 5, "truthfulness": 4, "honesty": 5, "helpfulness": 3, "rationale": "ok"}
    out, engine, _ = judged(json.dumps(reply), JudgeConfig(rubric="ultrafeedback"))
    assert out["scores"] == {"instruction_following": 5, "truthfulness": 4, "honesty": 5, "helpfulness": 3}
    assert engine.requests[0].sampling["structured_outputs"]["json"]["required"] == [
        "instruction_following", "truthfulness", "honesty", "helpfulness", "rationale"]
    assert "honesty" in engine.requests[0].prompt[-1]["content"]


@pytest.mark.parametrize("text, finish_reason, problem", [
    ("I would rate it 5.", "stop", "no JSON object"),
    ('{"accuracy": 5, "rationale": "Correct and', "length", "no JSON object"),
    ('{"accuracy": 9, "rationale": ""}', "stop", "accuracy 9 is outside 0-5"),
    ('{"rationale": "fine"}', "stop", "no number for 'accuracy'"),
    ('{"accuracy": "five"}', "stop", "no number for 'accuracy'"),
    ('{"accuracy": 5,}', "stop", "not valid JSON"),
])
def test_a_judgement_that_does_not_parse_is_a_reject_with_the_output_as_evidence(text, finish_reason, problem):
    out, _, _ = judged(text, JudgeConfig(structured=False), finish_reason)
    assert is_dropped(out)
    verdict = out["_drop"]
    assert (verdict["filter"], verdict["reason"]) == ("judge", "unparsed_judgement")
    assert verdict["evidence"]["problem"].startswith(problem)
    assert verdict["evidence"]["output"] == text and verdict["evidence"]["finish_reason"] == finish_reason


def test_free_text_around_the_object_still_parses_and_engine_failures_keep_their_reason():
    assert parse_judgement('Sure! {"accuracy": 3, "rationale": "meh"} Hope this helps.', RUBRICS["alpagasus"]) == (
        {"accuracy": 3}, "meh")
    # A control character inside the rationale (xgrammar's strings admit them) does not fail it.
    assert parse_judgement('{"accuracy": 0, "rationale": "a\x11b\tc"}', RUBRICS["alpagasus"]) == (
        {"accuracy": 0}, "a\x11b\tc")
    out, _, _ = judged("", finish_reason="prompt_too_long")
    assert out["_drop"]["reason"] == "prompt_too_long"
    unanswered = {**ANSWERED, "messages": ANSWERED["messages"][:1]}
    out, engine, _ = judged("{}", record=unanswered)
    assert out["_drop"]["reason"] == "no_response" and not engine.requests


def test_the_score_filter_keeps_records_at_or_above_every_threshold_with_the_scores_as_evidence():
    records = [{"id": str(i), "scores": scores} for i, scores in enumerate([
        {"accuracy": 5, "helpfulness": 4}, {"accuracy": 4, "helpfulness": 5}, {"accuracy": 5, "helpfulness": 3},
        {"accuracy": 5}, None])]
    score = Score(ScoreConfig(at_least={"accuracy": 4.5, "helpfulness": 4}))
    kept, dropped = score(records)
    assert [r["id"] for r in kept] == ["0"]
    reasons = {r["id"]: (r["_drop"]["reason"], r["_drop"]["evidence"]) for r in dropped}
    assert reasons["1"] == ("score_below_threshold", {"scores": {"accuracy": 4, "helpfulness": 5},
                                                      "below": {"accuracy": 4.5}})
    assert reasons["2"][1]["below"] == {"helpfulness": 4}
    assert reasons["3"] == ("unscored", {"missing": ["helpfulness"], "scores": {"accuracy": 5}})
    assert reasons["4"][0] == "unscored"
    assert score.stats() == {"kept": 1, "dropped": {"score_below_threshold": 2, "unscored": 2}}
    # The default is AlpaGasus's: accuracy at least 4.5.
    assert ScoreConfig().at_least == {"accuracy": 4.5}


def test_a_choice_constraint_holds_on_the_real_engines_output(engine_pool):
    choices = ["Equal", "Not Equal"]

    async def ask(sampling):
        replies = await asyncio.gather(*(engine_pool.chat([{"role": "user", "content": f"Are they equal? Case {i}."}],
                                                          sampling, key=f"choice/{i}") for i in range(24)))
        return [completions[0].text for completions in replies]

    constrained = asyncio.run(ask({"temperature": 1.0, "max_tokens": 16, "structured_outputs": {"choice": choices}}))
    assert len(constrained) == 24 and set(constrained) <= set(choices)
    free = asyncio.run(ask({"temperature": 1.0, "max_tokens": 16}))
    assert not set(free) & set(choices)  # the tiny model's own text is noise: the constraint did it


def test_the_judges_json_schema_holds_on_the_real_engines_output_or_the_record_is_a_reject(engine_pool):
    from gen.stages.base import StageContext

    stage = Judge(JudgeConfig(rubric="ultrafeedback", sampling=Sampling(max_tokens=600)),
                  StageContext(engine=engine_pool, model="sdg/tiny-random-chat", sampling=Sampling()))
    records = [{**ANSWERED, "id": f"r{i}", "messages": [{"role": "user", "content": f"Name {i} colours."},
                                                          {"role": "assistant", "content": "Red. " * i}]}
               for i in range(1, 13)]

    async def judge_all():
        return await asyncio.gather(*(stage.process(record) for record in records))

    out = [record for batch in asyncio.run(judge_all()) for record in batch]
    assert len(out) == 12
    for record in out:
        if is_dropped(record):  # only an answer cut at max_tokens can fail to parse
            assert record["_drop"]["reason"] == "unparsed_judgement"
            assert record["_drop"]["evidence"]["finish_reason"] == "length"
        else:
            assert set(record["scores"]) == set(RUBRICS["ultrafeedback"].aspects)
            assert all(isinstance(v, int) and 1 <= v <= 5 for v in record["scores"].values())
            assert isinstance(record["rationale"], str) and len(record["rationale"]) <= 600
    assert sum(not is_dropped(r) for r in out) >= 6, [r["_drop"]["evidence"] for r in out if is_dropped(r)]
    assert stage.completion_tokens > 0
