"""self_instruct: list parsing, the instruction and instance rules, the novelty check against
all-pairs ROUGE-L, the no-barrier bootstrap loop and its resume, and a run on the real engine."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
from pathlib import Path

import pytest
from stage_fakes import Committed, ScriptedEngine, collect, completion, context

from gen.novelty import NoveltyIndex, rouge_l, rouge_tokens
from gen.records import is_dropped
from gen.stages.self_instruct import (
    LIST_REGEX,
    SelfInstruct,
    SelfInstructConfig,
    clean_instances,
    parse_input_first,
    parse_instruction_list,
    parse_output_first,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def seed_records(count: int = 12) -> list[dict]:
    topics = ["breakfast", "antonyms", "haiku", "tax law", "sorting", "weather", "chess", "poetry",
              "sentiment", "geography", "music", "cooking", "finance", "biology", "travel"]
    records = []
    for i in range(count):
        records.append({
            "id": f"seed{i}", "work_key": f"seed{i}", "seed_id": f"seed_task_{i}", "method": "seed",
            "messages": [{"role": "user", "content": f"Tell me something useful about {topics[i]} today"}],
            "metadata": {"seed_instruction": f"Tell me something useful about {topics[i]} today",
                         "seed_input": "", "seed_output": f"Here is a fact about {topics[i]}.",
                         "is_classification": i % 3 == 0},
        })
    return records


# ------------------------------------------------------------------ parsing and rules


def test_parse_instruction_list_splits_the_continued_numbered_list():
    continuation = (" Suggest three names for a pet turtle.\n10. Explain  how vaccines work\n"
                    "to a child.\n11.Not an item\n12. ")
    assert parse_instruction_list(continuation) == [
        "Suggest three names for a pet turtle.",
        "Explain how vaccines work to a child.\n11.Not an item".replace("\n", " "),
    ]


def judge(config: SelfInstructConfig, text: str, finish_reason: str = "stop"):
    stage = SelfInstruct(config, context(ScriptedEngine(lambda p: completion(""))))
    pool = stage.restore_pool(seed_records(), Committed())
    from gen.stages.self_instruct import ListReply

    return pool, stage.judge_list(pool, ListReply(0, [], completion(text, finish_reason)))


def reasons(records):
    return [r["_drop"]["reason"] if is_dropped(r) else "kept" for r in records]


def test_instruction_rules_and_novelty_on_a_known_generation():
    text = (" Summarize the story of a novel you like in three sentences.\n"
            "10. Draw a map of your neighbourhood.\n"
            "11. Write a program that sorts numbers.\n"
            "12. Hi there.\n"
            "13. \"Quote\" the most famous line of a play you know.\n"
            "14. Tell me something useful about chess today, please.\n"
            "15. Ünïcode first character in this instruction here.\n"
            "16. Name the planets of the solar system in order")
    pool, records = judge(SelfInstructConfig(target=10, instances=False), text)
    assert reasons(records) == ["kept", "instruction_blacklisted_word", "instruction_banned_prefix",
                                "instruction_too_short", "instruction_starts_with_punctuation",
                                "too_similar", "instruction_starts_non_ascii", "kept"]
    kept = records[0]
    assert kept["metadata"]["machine_instruction"] == "Summarize the story of a novel you like in three sentences."
    assert kept["round"] == 1 and kept["metadata"]["bootstrap_round"] == 1
    assert kept["stage"] == "self_instruct" and kept["template"] == "self_instruct" and kept["template_hash"]
    assert "rouge_l" in kept["metadata"] and "most_similar_instruction" in kept["metadata"]
    similar = records[5]["_drop"]["evidence"]
    assert similar["most_similar_instruction"] == "Tell me something useful about chess today"
    assert similar["rouge_l"] > 0.7
    assert len({r["work_key"] for r in records}) == len(records)  # each candidate is its own work item


def test_a_truncated_or_failed_list_is_dropped_whole_with_a_reason():
    _, records = judge(SelfInstructConfig(instances=False), " A complete task here.\n10. A cut", "length")
    assert reasons(records) == ["truncated_response"]
    _, records = judge(SelfInstructConfig(instances=False), "", "prompt_too_long")
    assert reasons(records) == ["prompt_too_long"]
    _, records = judge(SelfInstructConfig(instances=False), "   ")
    assert reasons(records) == ["no_instructions"]


def test_instances_input_first_and_output_first_parsing_and_rules():
    generation = ("Example 1\nInput: 3, 1, 2\nOutput: 1, 2, 3\n\nExample 2\nInput: b, a\nOutput: a, b\n\n"
                  "Example 3\nInput: same\nOutput: same\n\nExample 4\nOutput:\n\nExample 5\nno output here")
    pairs = parse_input_first(generation)
    assert pairs == [("3, 1, 2", "1, 2, 3"), ("b, a", "a, b"), ("same", "same"), ("", "")]
    assert clean_instances(pairs, 5) == ([("3, 1, 2", "1, 2, 3"), ("b, a", "a, b")], None)
    assert parse_input_first("Output: Paris is the capital.") == [("", "Paris is the capital.")]
    assert clean_instances([("x", "1"), ("x", "2")], 5) == ([], "conflicting_instances")
    assert clean_instances([], 5) == ([], "unparsed_instances")
    assert clean_instances([("Input:", "a")], 5) == ([], "no_valid_instances")
    assert clean_instances([(str(i), "y") for i in range(9)], 5)[0] == [(str(i), "y") for i in range(5)]

    labelled = "Class label: Positive\nInput: I loved it.\n\nClass label: Negative\nInput: Awful film.\n"
    assert parse_output_first(labelled) == [("I loved it.", "Positive"), ("Awful film.", "Negative")]
    # SmolLM2 ends a labelled input with an input-first "Output:" line
    assert parse_output_first("\nClass label: yes\nInput: 347\nOutput: no") == [("347", "yes")]


def test_the_last_instance_of_a_cut_off_generation_is_dropped():
    def reply(prompt: str):
        if prompt.endswith("Is it classification?"):
            return completion(" No")
        if prompt.startswith("Write examples"):
            return completion("Example 1\nInput: 2 + 2\nOutput: 4\n\nExample 2\nInput: 3 + 5\nOutput: 1", "length")
        return completion(" Add the two numbers given to you")

    stage = SelfInstruct(SelfInstructConfig(target=1), context(ScriptedEngine(reply, capacity=1)))
    records = asyncio.run(collect(stage.generate(seed_records(), Committed())))
    assert [r["messages"] for r in records if not is_dropped(r)] == [[
        {"role": "user", "content": "Add the two numbers given to you\n\n2 + 2"},
        {"role": "assistant", "content": "4"}]]


# ------------------------------------------------------------------ the novelty index


def real_or_own_instructions() -> list[str]:
    seeds = SHARED_DATA / "self_instruct_seed_tasks.jsonl"
    texts = []
    if seeds.exists():
        texts = [json.loads(line)["instruction"] for line in seeds.read_text().splitlines() if line.strip()]
        for path in sorted((SHARED_DATA / "p3_sample").glob("*.jsonl"))[::4]:
            for line in path.read_text().splitlines()[:30]:
                texts.append(" ".join(json.loads(line)["prompt"].split()[:25]))
    if len(texts) < 400:  # no shared data: instructions of our own, with near-duplicate edits
        rng = random.Random(1)
        words = ("write explain list the a of poem story about for in three short sentences your "
                 "favourite city food sport history reasons why how people children summary").split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(300)]
        texts += [t.replace(" the ", " a ", 1) for t in texts[:150]]
    random.Random(0).shuffle(texts)
    return texts


def test_novelty_index_agrees_with_all_pairs_rouge_l_on_real_text():
    texts = real_or_own_instructions()
    index = NoveltyIndex(0.7)
    pool_tokens: list[list[str]] = []
    disagreements = 0
    for text in texts:
        tokens = rouge_tokens(text)
        exact = max((rouge_l(tokens, member) for member in pool_tokens), default=0.0)
        nearest = index.nearest(text)
        disagreements += index.is_novel(nearest) != (exact <= 0.7)
        if exact <= 0.7:  # both pools follow the exact decisions, so every decision is compared
            pool_tokens.append(tokens)
            index.add(text)
        if nearest.rouge_l > 0.7:
            assert nearest.rouge_l == pytest.approx(exact)  # a rejecting score is the exact maximum
    assert disagreements <= 0.01 * len(texts)
    assert index.rouge_calls < 0.2 * sum(range(len(pool_tokens)))  # candidates only, not all pairs


# ------------------------------------------------------------------ the bootstrap loop and resume

_counter = itertools.count()


def fresh_list(prompt: str):
    """A reply of three instructions never seen before (random made-up words share nothing)."""
    made = [" ".join(f"w{next(_counter)}" for _ in range(6)) for _ in range(3)]
    return completion(f" Explain {made[0]}\n10. Describe {made[1]}\n11. Compare {made[2]}")


def test_bootstrap_reaches_target_exactly_shows_the_paper_prompt_and_counts_rounds():
    engine = ScriptedEngine(fresh_list, capacity=3)
    stage = SelfInstruct(SelfInstructConfig(target=10, instances=False), context(engine))
    records = asyncio.run(collect(stage.generate(seed_records(), Committed())))
    kept = [r for r in records if not is_dropped(r)]
    assert len(kept) == 10
    assert len({r["metadata"]["machine_instruction"] for r in kept}) == 10
    first = engine.prompts[0]
    assert first.startswith("Come up with a series of tasks:\n1. ") and first.endswith("\n9.")
    assert len(re.findall(r"^\d+\. ", first, re.MULTILINE)) == 8
    later = [p for p in engine.prompts if re.search(r"^\d+\. (Explain|Describe|Compare) w\d", p, re.MULTILINE)]
    assert later, "machine instructions join later prompts"
    assert max(r["round"] for r in kept) >= 2


def test_resume_reloads_the_committed_pool_and_neither_rebuilds_nor_duplicates_it():
    config = SelfInstructConfig(target=6, instances=False)
    first = asyncio.run(collect(SelfInstruct(config, context(ScriptedEngine(fresh_list))).generate(
        seed_records(), Committed())))
    committed = first[:4]  # the run crashed after committing four work items
    already = {r["metadata"]["machine_instruction"] for r in committed if not is_dropped(r)}
    engine = ScriptedEngine(fresh_list)
    resumed_config = SelfInstructConfig(target=6 + 3, instances=False)
    second = asyncio.run(collect(SelfInstruct(resumed_config, context(engine)).generate(
        seed_records(), Committed(committed))))
    new = [r["metadata"]["machine_instruction"] for r in second if not is_dropped(r)]
    assert len(new) == 9 - len(already)
    assert not set(new) & already
    assert not {r["id"] for r in second} & {r["id"] for r in committed}
    assert min(r["metadata"]["bootstrap_request"] for r in second) == 1 + max(
        r["metadata"]["bootstrap_request"] for r in committed)


def test_instances_are_generated_output_first_for_classification_tasks():
    def reply(prompt: str):
        if prompt.endswith("Is it classification?"):
            return completion(" Yes" if "Classify" in prompt.rsplit("Task:", 1)[1] else " No")
        if prompt.startswith("For each classification task"):
            return completion("Class label: Spam\nInput: Win money now\n\nClass label: Ham\nInput: Lunch at 1?")
        if prompt.startswith("Write examples"):
            return completion("Example 1\nInput: 2 + 2\nOutput: 4\n")
        return completion(" Classify the email as spam or ham for me\n10. Add the two numbers given to you")

    engine = ScriptedEngine(reply, capacity=1)
    stage = SelfInstruct(SelfInstructConfig(target=2), context(engine))
    records = asyncio.run(collect(stage.generate(seed_records(), Committed())))
    by_task = {}
    for record in records:
        assert not is_dropped(record)
        by_task.setdefault(record["metadata"]["machine_instruction"], []).append(record)
    spam = by_task["Classify the email as spam or ham for me"]
    assert [r["messages"][-1]["content"] for r in spam] == ["Spam", "Ham"]
    assert spam[0]["messages"][0]["content"] == "Classify the email as spam or ham for me\n\nWin money now"
    assert spam[0]["metadata"]["is_classification"] is True
    assert spam[0]["template"] == "self_instruct_output_first" and spam[0]["method"] == "self_instruct"
    [add] = by_task["Add the two numbers given to you"]
    assert add["messages"][1]["content"] == "4" and add["template"] == "self_instruct_input_first"
    # the paper's decoding for each kind of request (generate_instances.py, identify_clf_or_not.py)
    questions = engine.sampling_of(lambda p: p.endswith("Is it classification?"))
    instances = engine.sampling_of(lambda p: p.startswith(("For each classification task", "Write examples")))
    assert len(questions) == 2 and len(instances) == 2
    assert all(s["temperature"] == 0 and s["max_tokens"] == 3 and s["stop"] == ["\n", "Task"] for s in questions)
    assert all(s["temperature"] == 0 and s["presence_penalty"] == 1.5 and s["max_tokens"] == 350
               and s["stop"] == ["Task:"] for s in instances)


def test_list_requests_use_the_papers_decoding_under_the_stages_own_overrides():
    engine = ScriptedEngine(fresh_list, capacity=2)
    config = SelfInstructConfig(target=4, instances=False, sampling={"max_tokens": 128})
    # the spec-wide section loses to the method's decoding, which loses to the stage's override
    stage = SelfInstruct(config, context(engine, temperature=1.3, top_p=0.9, max_tokens=16, seed=3))
    asyncio.run(collect(stage.generate(seed_records(), Committed())))
    assert engine.requests
    for sampling in engine.sampling_of(lambda p: p.startswith("Come up with a series of tasks")):
        assert sampling == {"temperature": 0.7, "top_p": 0.5, "presence_penalty": 2.0, "max_tokens": 128,
                            "stop": ["\n\n", "\n16", "16.", "16 ."], "seed": 3, "n": 1}
    # The structured mode adds the list's shape as a regex, under vLLM's name.
    engine = ScriptedEngine(fresh_list, capacity=2)
    stage = SelfInstruct(config.model_copy(update={"structured_list": True}), context(engine))
    asyncio.run(collect(stage.generate(seed_records(), Committed())))
    for sampling in engine.sampling_of(lambda p: p.startswith("Come up with a series of tasks")):
        assert sampling["structured_outputs"] == {"regex": LIST_REGEX}


def test_the_list_regex_matches_what_the_paper_splits():
    continuation = " Name a fruit.\n10. Sort the numbers 3, 1, 2.\n11. Write a haiku about rain."
    assert re.fullmatch(LIST_REGEX, continuation)
    assert parse_instruction_list(continuation) == ["Name a fruit.", "Sort the numbers 3, 1, 2.",
                                                    "Write a haiku about rain."]
    assert not re.fullmatch(LIST_REGEX, " Name a fruit.\n\nSome prose after the list.")


# ------------------------------------------------------------------ the real engine


def test_end_to_end_on_the_tiny_model(engine_pool):
    config = SelfInstructConfig(target=5, max_requests=6, instances=True)
    stage = SelfInstruct(config, context(engine_pool, max_tokens=48))
    records = asyncio.run(collect(stage.generate(seed_records(), Committed())))
    assert records  # noise: mostly rejected, each with a reason
    for record in records:
        assert record["stage"] == "self_instruct" and record["template_hash"]
        if is_dropped(record):
            assert re.fullmatch(r"[a-z_]+", record["_drop"]["reason"])
    assert max(r["metadata"]["bootstrap_request"] for r in records) < 6
