"""self_chat: turn taking, the end signal, topics and personas, and a real-engine run."""

from __future__ import annotations

import asyncio

from stage_fakes import ScriptedEngine, completion, context

from gen.records import is_dropped
from gen.stages.self_chat import SelfChat, SelfChatConfig, user_message

QUESTION = {"id": "q1", "work_key": "q1", "seed_id": "q1", "method": "seed",
            "messages": [{"role": "user", "content": "How do tides work?"}], "metadata": {}}
EMPTY = {"id": "e1", "work_key": "e1", "seed_id": "e1", "method": "seed", "messages": [], "metadata": {}}


def test_user_message_parsing():
    assert user_message("  Tell me more. ") == ("Tell me more.", False)
    assert user_message("Thanks, that helps! [END]") == ("Thanks, that helps!", True)
    assert user_message("[END]") == ("", True)


def scripted(user_replies: list[str]):
    replies = iter(user_replies)

    def reply(messages):
        if messages[0]["content"].startswith("You are playing the user"):
            return completion(next(replies))
        return completion(f"Answer to: {messages[-1]['content']}")

    return ScriptedEngine(reply)


def test_conversation_alternates_and_stops_at_the_end_signal():
    stage = SelfChat(SelfChatConfig(turns=5), context(scripted(["Why twice a day?", "Great, thanks! [END]"])))
    [record] = asyncio.run(stage.process(QUESTION))
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"] * 2
    assert record["messages"][0]["content"] == "How do tides work?"
    assert record["messages"][3]["content"] == "Answer to: Why twice a day?"
    assert record["metadata"]["self_chat_turns"] == 2 and record["metadata"]["self_chat_ended_by"] == "end_signal"
    assert record["stage"] == "self_chat" and record["template"] == "self_chat_user"


def test_topic_opens_the_conversation_and_turns_cap_it():
    engine = scripted(["What is a sonnet?", "And a haiku?", "And a limerick?"])
    stage = SelfChat(SelfChatConfig(turns=2, topics=["poetry forms"], personas=["a curious student"]),
                     context(engine))
    [record] = asyncio.run(stage.process(EMPTY))
    assert record["messages"][0]["content"] == "What is a sonnet?"
    assert len(record["messages"]) == 4 and record["metadata"]["self_chat_ended_by"] == "max_turns"
    assert record["metadata"]["topic"] == "poetry forms"
    opening_prompt = engine.prompts[0][0]["content"]
    assert "poetry forms" in opening_prompt and "a curious student" in opening_prompt


def test_user_and_assistant_turns_get_their_own_sampling():
    engine = scripted(["What is a sonnet?", "And a haiku?"])
    config = SelfChatConfig(turns=2, topics=["poetry"], user_sampling={"max_tokens": 48},
                            sampling={"temperature": 0.2})
    asyncio.run(SelfChat(config, context(engine, temperature=0.7, max_tokens=100)).process(EMPTY))
    def is_user_side(messages):
        return messages[0]["content"].startswith("You are playing the user")
    user_side = engine.sampling_of(is_user_side)
    assistant_side = engine.sampling_of(lambda messages: not is_user_side(messages))
    assert user_side == [{"temperature": 1.0, "top_p": 0.95, "max_tokens": 48, "n": 1}] * 2
    assert assistant_side == [{"temperature": 0.2, "max_tokens": 100, "n": 1}] * 2


def test_nothing_to_talk_about_and_failures_are_dropped_with_a_reason():
    stage = SelfChat(SelfChatConfig(), context(scripted([])))
    assert asyncio.run(stage.process(EMPTY))[0]["_drop"]["reason"] == "no_topic"
    failing = ScriptedEngine(lambda messages: completion("", "prompt_too_long"))
    [record] = asyncio.run(SelfChat(SelfChatConfig(), context(failing)).process(QUESTION))
    assert is_dropped(record) and record["_drop"]["reason"] == "prompt_too_long"
    ended = SelfChat(SelfChatConfig(topics=["x"]), context(scripted(["[END]"])))
    assert asyncio.run(ended.process(EMPTY))[0]["_drop"]["reason"] == "no_exchange"


def test_end_to_end_on_the_tiny_model(engine_pool):
    stage = SelfChat(SelfChatConfig(turns=3, topics=["gardening"]), context(engine_pool, max_tokens=24))
    [record] = asyncio.run(stage.process(QUESTION))
    assert not is_dropped(record)
    assert [m["role"] for m in record["messages"]][:2] == ["user", "assistant"]
    assert record["messages"][-1]["role"] == "assistant"
