"""The one LLM call of `add(infer=True)`: what the prompt carries (the conversation, its date), what happens
when the model's answer is broken (one retry showing the error, then `ExtractionError` with nothing written),
and what happens with no model configured. Real Milvus Lite and Kuzu; the model is scripted.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import ScriptedModel
from replays_memory import add_op, answer, fresh_memory, shown_items, update_op

from memory import ExtractionError, LLMNotConfiguredError, Memory


@pytest.fixture
def mem(data_dir: Path, model: ScriptedModel) -> Iterator[Memory]:
    """A Memory on fresh, empty embedded stores, with the scripted model as its LLM."""
    with fresh_memory(data_dir, model) as memory:
        yield memory


GOOD = answer([add_op("Likes green tea", ("USER", "likes", "green tea"))], {"green tea": "object"})


def prompt_of(model: ScriptedModel, call: int = -1) -> str:
    """The system prompt (the extraction instructions) of one model call."""
    return str(model.calls[call][0].content)


def conversation_of(model: ScriptedModel, call: int = -1) -> str:
    """Everything after the system prompt of one model call, as one text."""
    return "\n".join(str(m.content) for m in model.calls[call][1:])


def test_the_prompt_carries_the_conversation_and_the_related_memories(mem: Memory, model: ScriptedModel) -> None:
    mem.add("Has a sister named Emma", user_id="u", infer=False)
    mem.add("Works as a nurse", user_id="u", infer=False)
    mem.add("Likes rock climbing", user_id="other", infer=False)
    model.push(GOOD)
    added = mem.add([{"role": "user", "content": "Emma and I drank green tea"},
                     {"role": "assistant", "content": "Lovely! Do you like it?"},
                     {"role": "user", "content": "Yes, a lot"}], user_id="u")
    assert [(r["event"], r["memory"]) for r in added["results"]] == [("ADD", "Likes green tea")]
    assert conversation_of(model) == ("NEW CONVERSATION:\n[1] user: Emma and I drank green tea\n"
                                      "[2] assistant: Lovely! Do you like it?\n[3] user: Yes, a lot")
    prompt = prompt_of(model)
    assert set(shown_items(prompt, "MEMORIES")) == {"Has a sister named Emma", "Works as a nurse"}
    assert "rock climbing" not in prompt, "another user's memory is never shown"
    assert shown_items(prompt, "RELATIONS") == {}, "memories stored verbatim state no relations"


@pytest.mark.parametrize(("first", "error"), [
    ("Sure! The user likes green tea, so I would add that memory.", "no JSON object"),
    ('{"memories": [{"event": "INSERT", "text": "Likes green tea"}]}', "memories.0.event"),
    ('{"memories": [{"event": "UPDATE", "text": "Likes green tea"}]}', "UPDATE needs the integer id"),
    ('{"memories": [{"event": "ADD", "text": "Likes green tea"}], "invalidated_relations": ["zero"]}',
     "invalidated_relations.0"),
    (answer([update_op(7, "Likes green tea")]), "memory id 7 does not exist"),
    ('```json\n{"memories": [{"event": "ADD", "text": "Likes green tea",}]}\n```', "does not parse"),
], ids=["prose", "bad-event", "update-without-id", "bad-relation-id", "invented-id", "broken-json"])
def test_an_invalid_answer_is_retried_once_with_the_error_shown(mem: Memory, model: ScriptedModel, first: str,
                                                                error: str) -> None:
    mem.add("Has a sister named Emma", user_id="u", infer=False)
    model.push(first, GOOD)
    added = mem.add("I really like green tea", user_id="u")
    assert [(r["event"], r["memory"]) for r in added["results"]] == [("ADD", "Likes green tea")]
    assert len(model.calls) == 2
    retry = model.calls[1]
    assert str(retry[-2].content) == first, "the model sees its own invalid answer"
    assert error in str(retry[-1].content) and "invalid" in str(retry[-1].content)
    assert prompt_of(model, 1) == prompt_of(model, 0)
    assert sorted(r["memory"] for r in mem.get_all(user_id="u")["results"]) == ["Has a sister named Emma",
                                                                               "Likes green tea"]


def test_an_answer_invalid_twice_raises_and_writes_nothing(mem: Memory, model: ScriptedModel) -> None:
    sister = mem.add("Has a sister named Emma", user_id="u", infer=False)["results"][0]["id"]
    model.push(answer([update_op(3, "Has a sister named Emma, a doctor", ("USER", "sister", "Emma")),
                       add_op("Likes green tea", ("USER", "likes", "green tea"))]),
               "I am sorry, I cannot answer in JSON.")
    with pytest.raises(ExtractionError) as raised:
        mem.add("Emma became a doctor. I like green tea", user_id="u")
    message = str(raised.value)
    assert "invalid twice" in message and "no JSON object" in message and "\n" not in message
    assert len(model.calls) == 2
    listed = mem.get_all(user_id="u")
    assert [r["memory"] for r in listed["results"]] == ["Has a sister named Emma"]
    assert listed["relations"] == [] and mem.relations(user_id="u", include_invalid=True) == []
    assert [h["event"] for h in mem.history(sister)] == ["ADD"]
    assert mem.search("green tea", user_id="u")["results"][0]["memory"] == "Has a sister named Emma"

    model.push(answer([update_op(0, "Has a sister named Emma, a doctor", ("USER", "sister", "Emma")),
                       add_op("Likes green tea", ("USER", "likes", "green tea"))]))
    retried = mem.add("Emma became a doctor. I like green tea", user_id="u")  # the caller retries as is
    assert [r["event"] for r in retried["results"]] == ["UPDATE", "ADD"]
    assert len(mem.relations(user_id="u")) == 2


def test_without_a_model_infer_true_says_how_to_configure_and_the_rest_works(data_dir: Path) -> None:
    with fresh_memory(data_dir) as mem:
        assert mem.llm is None
        with pytest.raises(LLMNotConfiguredError) as raised:
            mem.add("I like green tea", user_id="u")
        assert "OPENAI_API_KEY" in str(raised.value) and "infer=False" in str(raised.value)
        assert mem.get_all(user_id="u")["results"] == []
        mem.add("I like green tea", user_id="u", infer=False)
        assert [r["memory"] for r in mem.search("tea", user_id="u")["results"]] == ["I like green tea"]


def test_one_call_per_add_none_per_search(mem: Memory, model: ScriptedModel) -> None:
    model.push(GOOD, answer(), answer([add_op("Has a cat named Mimi", ("USER", "owns", "Mimi"))]))
    for text in ("I like green tea", "Hi there!", "I have a cat, Mimi"):
        before = len(model.calls)
        mem.add(text, user_id="u")
        assert len(model.calls) == before + 1
    for query in ("tea", "What is my cat called?", "Mimi", "我的猫叫什么?"):
        mem.search(query, user_id="u")
    mem.get_all(user_id="u")
    assert len(model.calls) == 3


# -- the conversation's date -----------------------------------------------------------------------------
@pytest.mark.parametrize(("timestamp", "day", "stored"), [
    ("2023-05-20T10:00:00", "2023-05-20", "2023-05-20T10:00:00+00:00"),
    (datetime(2023, 5, 20, 23, 30, tzinfo=UTC), "2023-05-20", "2023-05-20T23:30:00+00:00"),
    ("2024-03-01T00:30:00+08:00", "2024-03-01", "2024-02-29T16:30:00+00:00"),  # the speaker's own calendar day
    (datetime(2022, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))), "2022-12-31", "2023-01-01T01:00:00+00:00"),
], ids=["naive-iso", "utc-datetime", "beijing-after-midnight", "new-york-evening"])
def test_the_prompt_carries_the_conversation_date_and_it_is_stored(mem: Memory, model: ScriptedModel,
                                                                   timestamp: str | datetime, day: str,
                                                                   stored: str) -> None:
    model.push(answer([add_op(f"Adopted a cat named Mimi the day before {day}", ("USER", "owns", "Mimi"))]))
    added = mem.add("Yesterday I adopted a cat named Mimi", user_id="u", timestamp=timestamp)
    prompt = prompt_of(model)
    assert f"Today's date (when the conversation took place): {day} (" in prompt
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert today not in prompt
    memory_id = added["results"][0]["id"]
    assert datetime.fromisoformat(mem.get(memory_id)["event_time"]) == datetime.fromisoformat(stored)
    assert mem.search("cat", user_id="u")["results"][0]["event_time"] == mem.get(memory_id)["event_time"]


def test_the_date_is_the_conversations_for_every_add(mem: Memory, model: ScriptedModel) -> None:
    model.push(answer(), answer())
    mem.add("Hello", user_id="u", timestamp="2021-01-02T12:00:00Z")
    mem.add("Hello again", user_id="u", timestamp="2021-07-08T12:00:00Z")
    assert "2021-01-02 (Saturday)" in prompt_of(model, 0)
    assert "2021-07-08 (Thursday)" in prompt_of(model, 1)
    assert "2021-01-02" not in prompt_of(model, 1)


def test_an_update_takes_the_time_of_the_conversation_that_changed_it(mem: Memory, model: ScriptedModel) -> None:
    model.push(answer([add_op("Lives in Paris")]), answer([update_op(0, "Lives in Lyon")]))
    first = mem.add("I live in Paris", user_id="u", timestamp="2020-01-01T09:00:00Z")["results"][0]
    mem.add("I moved to Lyon", user_id="u", timestamp="2022-06-01T09:00:00Z")
    now = mem.get(first["id"])
    assert now["memory"] == "Lives in Lyon"
    assert datetime.fromisoformat(now["event_time"]) == datetime(2022, 6, 1, 9, tzinfo=UTC)


def test_relations_are_valid_from_the_conversation_that_stated_them(mem: Memory, model: ScriptedModel) -> None:
    model.push(answer([add_op("Likes badminton", ("USER", "likes", "badminton"))]),
               answer([update_op(0, "Dislikes badminton", ("USER", "dislikes", "badminton"))], invalidated=[0]))
    mem.add("I like badminton", user_id="u", timestamp="2023-03-01T10:00:00Z")
    mem.add("I dislike badminton", user_id="u", timestamp="2024-06-01T10:00:00Z")
    windows = {r["relationship"]: (r["valid_from"], r["valid_to"])
               for r in mem.relations(user_id="u", include_invalid=True)}
    assert windows == {"likes": ("2023-03-01T10:00:00+00:00", "2024-06-01T10:00:00+00:00"),
                       "dislikes": ("2024-06-01T10:00:00+00:00", None)}
