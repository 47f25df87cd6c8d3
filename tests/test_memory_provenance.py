"""Provenance of inferred memories: `add(messages, infer=True)` shows the messages numbered, the model names the
numbers each memory comes from in `sources`, and the memory keeps the messages' ids in `metadata["source_ids"]`.

Real Milvus Lite and Kuzu (`conftest.make_memory`); the model is scripted and its JSON answers go through the
real parser (`prompts.extract.parse`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import ScriptedModel

from memory import InputError, Memory
from prompts import extract

CHAT = [{"role": "user", "content": "Caroline: I adopted a puppy named Biscuit.", "id": "D1:3"},
        {"role": "assistant", "content": "Melanie: Lovely!"},  # no id: its number, "2", stands for it
        {"role": "user", "content": "Caroline: He is a golden retriever.", "id": "D1:5"}]


def op(event: str, text: str, sources: Any = None, memory_id: int | None = None) -> dict[str, Any]:
    """One decision of an extraction answer; `sources` left out of the JSON when None."""
    decision: dict[str, Any] = {"event": event, "text": text}
    if memory_id is not None:
        decision["id"] = memory_id
    if sources is not None:
        decision["sources"] = sources
    return decision


def reply(*memories: dict[str, Any]) -> str:
    """The model's answer text."""
    return json.dumps({"memories": list(memories), "entities": [], "invalidated_relations": []})


def source_ids(mem: Memory, memory_id: str) -> list[str]:
    """The stored provenance of one memory."""
    found = mem.get(memory_id)
    assert found is not None
    return found["metadata"]["source_ids"]


def test_the_prompt_numbers_the_messages_and_the_sources_become_their_ids(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Caroline has a golden retriever puppy named Biscuit", [1, 3]),
                     op("ADD", "Melanie finds Caroline's puppy lovely", [2])))
    added = mem.add(CHAT, user_id="u", metadata={"session": 1})
    assert len(model.calls) == 1, "provenance costs no extra model call"
    assert str(model.calls[0][-1].content) == (
        "NEW CONVERSATION:\n[1] user: Caroline: I adopted a puppy named Biscuit.\n[2] assistant: Melanie: Lovely!\n"
        "[3] user: Caroline: He is a golden retriever.")
    assert "D1:3" not in str(model.calls[0][0].content) + str(model.calls[0][-1].content), "ids are not shown"
    puppy, lovely = (r["id"] for r in added["results"])
    assert source_ids(mem, puppy) == ["D1:3", "D1:5"]
    assert source_ids(mem, lovely) == ["2"]
    assert mem.get(puppy)["metadata"]["session"] == 1, "the call's metadata is kept beside source_ids"
    found = mem.search("What is the name of Caroline's puppy?", user_id="u")["results"]
    assert found[0]["id"] == puppy and found[0]["metadata"]["source_ids"] == ["D1:3", "D1:5"]


def test_an_update_merges_the_new_sources_with_the_old(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Lives in Paris", [1])),
               reply(op("UPDATE", "Lives in Lyon, moved from Paris", [2, 1], memory_id=0)))
    first = mem.add([{"role": "user", "content": "I live in Paris", "id": "D1:1"}], user_id="u")["results"][0]
    assert source_ids(mem, first["id"]) == ["D1:1"]
    updated = mem.add([{"role": "user", "content": "Hello again", "id": "D2:1"},
                       {"role": "user", "content": "I moved to Lyon", "id": "D2:2"}], user_id="u")["results"]
    assert [(r["event"], r["id"]) for r in updated] == [("UPDATE", first["id"])]
    assert mem.get(first["id"])["memory"] == "Lives in Lyon, moved from Paris"
    assert source_ids(mem, first["id"]) == ["D1:1", "D2:2", "D2:1"], "old sources first, then the new ones"
    model.push(reply(op("UPDATE", "Lives in Lyon", [1], memory_id=0)))
    mem.add([{"role": "user", "content": "Yes, Lyon", "id": "D1:1"}], user_id="u")  # an id seen before: no repeat
    assert source_ids(mem, first["id"]) == ["D1:1", "D2:2", "D2:1"]


def test_out_of_range_and_unreadable_sources_are_dropped_not_fatal(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Has a cat named Mimi", [0, 2, 3, 7, -1, "[1]", "x", None, 2.5])))
    added = mem.add([{"role": "user", "content": "I have a cat", "id": "a"},
                     {"role": "user", "content": "She is called Mimi", "id": "b"},
                     {"role": "user", "content": "   ", "id": "blank"}], user_id="u")  # blank: not shown, not a source
    assert len(model.calls) == 1, "no retry: provenance never makes an answer invalid"
    assert "[3]" not in str(model.calls[0][-1].content)
    assert source_ids(mem, added["results"][0]["id"]) == ["b", "a"]


def test_a_bare_number_is_a_one_source_list(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Likes jazz", 1)))
    added = mem.add("I like jazz", user_id="u")
    assert source_ids(mem, added["results"][0]["id"]) == ["1"]


def test_an_answer_without_sources_still_works(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Likes green tea")), reply(op("UPDATE", "Likes green and black tea", memory_id=0)))
    added = mem.add([{"role": "user", "content": "I like green tea", "id": "m1"}], user_id="u")["results"][0]
    assert added["event"] == "ADD" and source_ids(mem, added["id"]) == []
    mem.add("And black tea too", user_id="u")
    assert mem.get(added["id"])["memory"] == "Likes green and black tea"
    assert source_ids(mem, added["id"]) == []
    assert len(model.calls) == 2


def test_a_duplicate_fact_keeps_the_sources_of_each_decision(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Plays the violin", [1]), op("ADD", "Plays the violin", [2])))
    added = mem.add([{"role": "user", "content": "I play the violin", "id": "x1"},
                     {"role": "user", "content": "Violin every evening", "id": "x2"}], user_id="u")
    assert [r["event"] for r in added["results"]] == ["ADD", "NONE"]
    assert source_ids(mem, added["results"][0]["id"]) == ["x1", "x2"]


@pytest.mark.parametrize("bad", ["", "   ", "x" * 257, 7, ["D1:1"]], ids=["empty", "blank", "too-long", "int", "list"])
def test_a_bad_message_id_is_refused_before_any_model_call(mem: Memory, model: ScriptedModel, bad: Any) -> None:
    with pytest.raises(InputError, match="'id' must be a non-empty string of at most 256"):
        mem.add([{"role": "user", "content": "I like tea", "id": bad}], user_id="u")
    assert model.calls == [] and mem.get_all(user_id="u")["results"] == []


def test_an_id_of_256_characters_is_kept(mem: Memory, model: ScriptedModel) -> None:
    model.push(reply(op("ADD", "Likes tea", [1])))
    added = mem.add([{"role": "user", "content": "I like tea", "id": "i" * 256}], user_id="u")
    assert source_ids(mem, added["results"][0]["id"]) == ["i" * 256]


def test_the_prompts_answer_shape_is_the_typed_answer_model() -> None:
    prompt = extract.render("2023-05-08 (Monday)", [], [])
    example = prompt.split("of this shape:", 1)[1]
    parsed = extract.json_answer(example, extract.ExtractionResult)  # the example itself is a valid answer
    assert [op.sources for op in parsed.memories] == [[1, 3], [2], []]
    shown_keys = set(re.findall(r'"(\w+)":', example))
    fields = (set(extract.ExtractionResult.model_fields) | set(extract.MemoryOp.model_fields)
              | set(extract.RelationOut.model_fields) | set(extract.EntityOut.model_fields))
    assert shown_keys <= fields and "sources" in shown_keys
    assert "`sources`" in prompt and "[1], [2]" in prompt
    assert extract.conversation([{"role": "user", "content": "hi"}, {"role": "user", "content": "yo", "number": "4"}]) \
        == "[1] user: hi\n[4] user: yo"
