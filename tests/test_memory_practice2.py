"""The seeds' Practice 2, in English and in Chinese: user alice123 tells seven facts through `add(infer=True)`
(the model's answers scripted in `replays_memory/`), then asks "What is my name?" and "Who is Spider-Man?".

Real Milvus Lite and Kuzu under a temporary directory; one memory per language, built once for the module,
and only read by the tests (each test that searches checks that no LLM call is made).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from replays_memory import PromptReadingModel, fresh_memory, load_replay, reading_model

from memory import Memory

USER = "alice123"
CJK = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")

LANGUAGES: dict[str, dict[str, str]] = {
    "en": {"name_query": "What is my name?", "name": "Alice", "name_memory": "Name is Alice",
           "spider_query": "Who is Spider‑Man?", "peter": "Peter", "spider": "Spider-Man",
           "spider_memory": "Friend Peter is Spider-Man", "badminton_query": "Do I like badminton?",
           "badminton": "badminton", "like": "Likes badminton", "dislike": "Dislikes badminton", "john": "John",
           "tommy": "Tommy", "hiking": "hiking"},
    "zh": {"name_query": "我的名字是什么?", "name": "爱丽丝", "name_memory": "名字是爱丽丝",
           "spider_query": "谁是蜘蛛侠?", "peter": "彼得", "spider": "蜘蛛侠", "spider_memory": "朋友彼得是蜘蛛侠",
           "badminton_query": "我喜欢打羽毛球吗?", "badminton": "羽毛球", "like": "喜欢打羽毛球",
           "dislike": "讨厌打羽毛球", "john": "约翰", "tommy": "汤米", "hiking": "徒步旅行"},
}


@dataclass
class Practice:
    """One language's memory after the seven adds, with what each add returned and cost."""

    lang: str
    words: dict[str, str]
    mem: Memory
    model: PromptReadingModel
    says: list[str]
    added: list[dict[str, Any]] = field(default_factory=list)
    calls_per_add: list[int] = field(default_factory=list)

    def search(self, query: str) -> dict[str, Any]:
        """Search as alice123, asserting the search made no LLM call."""
        before = len(self.model.calls)
        found = self.mem.search(query, user_id=USER)
        assert len(self.model.calls) == before, "search must not call the language model"
        return found


@pytest.fixture(scope="module", params=sorted(LANGUAGES))
def practice(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Practice]:
    """The seeds' seven facts told by alice123 in one language, each through one `add(infer=True)`."""
    steps = load_replay(f"practice2_{request.param}")
    model = reading_model(*(json.dumps(step["answer"], ensure_ascii=False) for step in steps))
    mem = fresh_memory(tmp_path_factory.mktemp(f"practice2_{request.param}") / "data", model)
    done = Practice(request.param, LANGUAGES[request.param], mem, model, [step["say"] for step in steps])
    for step in steps:
        before = len(model.calls)
        done.added.append(mem.add(step["say"], user_id=USER))
        done.calls_per_add.append(len(model.calls) - before)
    yield done
    mem.close()


def triples(relations: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Relations as (source, relationship, destination)."""
    return [(r["source"], r["relationship"], r["destination"]) for r in relations]


def test_one_llm_call_per_add_graph_included(practice: Practice) -> None:
    assert practice.calls_per_add == [1] * 7
    assert not practice.model.replies, "every scripted answer was used"


def test_add_reports_what_the_model_decided(practice: Practice) -> None:
    events = [[r["event"] for r in added["results"]] for added in practice.added]
    assert events == [["ADD"], ["ADD"], ["UPDATE"], ["ADD"], ["ADD"], ["ADD", "ADD"], ["ADD"]]
    like, dislike = practice.added[1]["results"][0], practice.added[2]["results"][0]
    assert dislike["id"] == like["id"], "the contradiction updates the remembered fact, it does not add one"
    assert dislike["memory"] == practice.words["dislike"]
    assert dislike["previous_memory"] == practice.words["like"]
    assert triples(practice.added[6]["relations"]["added"])[-1] == (practice.words["peter"], "is",
                                                                    practice.words["spider"])
    assert practice.added[2]["relations"]["invalidated"][0]["relationship"] == "likes"


def test_what_is_my_name_gives_the_name_relation_and_memory(practice: Practice) -> None:
    found = practice.search(practice.words["name_query"])
    assert (USER, "has_name", practice.words["name"]) in triples(found["relations"])
    if practice.lang == "en":  # the query's words name the relation type
        assert triples(found["relations"])[0] == (USER, "has_name", "Alice")
    assert found["results"][0]["memory"] == practice.words["name_memory"]
    assert all(r["user_id"] == USER for r in found["results"])
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    assert {"id", "memory", "score", "metadata", "created_at", "updated_at", "user_id"} <= set(found["results"][0])


def test_who_is_spider_man_gives_peter(practice: Practice) -> None:
    found = practice.search(practice.words["spider_query"])
    assert triples(found["relations"])[0] == (practice.words["peter"], "is", practice.words["spider"])
    assert found["results"][0]["memory"] == practice.words["spider_memory"]


def test_badminton_dislike_replaces_the_like(practice: Practice) -> None:
    words = practice.words
    found = practice.search(words["badminton_query"])
    memories = [r["memory"] for r in found["results"]]
    assert memories[0] == words["dislike"]
    assert words["like"] not in memories
    current = triples(found["relations"])
    assert (USER, "dislikes", words["badminton"]) in current
    assert (USER, "likes", words["badminton"]) not in current
    assert (USER, "likes", words["badminton"]) not in triples(practice.mem.relations(user_id=USER))

    every = practice.mem.relations(user_id=USER, include_invalid=True)
    old = [r for r in every if triples([r])[0] == (USER, "likes", words["badminton"])]
    assert len(old) == 1 and old[0]["valid_to"] is not None, "the old relation is invalidated, not lost"
    assert old[0]["valid_to"] >= old[0]["valid_from"]

    history = practice.mem.history(found["results"][0]["id"])
    assert [(h["event"], h["old_memory"], h["new_memory"]) for h in history] == [
        ("ADD", None, words["like"]), ("UPDATE", words["like"], words["dislike"])]


def test_the_contradicting_add_showed_the_model_what_it_contradicts(practice: Practice) -> None:
    prompt = str(practice.model.calls[2][0].content)
    assert re.search(rf"^\d+: {re.escape(practice.words['like'])}$", prompt, re.MULTILINE)
    assert re.search(rf"^\d+: USER -likes-> {re.escape(practice.words['badminton'])}$", prompt, re.MULTILINE)
    assert f"user: {practice.says[2]}" in str(practice.model.calls[2][1].content)


def test_one_node_per_entity_across_adds(practice: Practice) -> None:
    john = practice.words["john"]
    assert [e.name for e in practice.mem.graph.entities(USER)].count(john) == 1
    john_relations = [r for r in triples(practice.mem.relations(user_id=USER)) if john in (r[0], r[2])]
    assert set(john_relations) == {(USER, "friend_of", john), (john, "owns", practice.words["tommy"]),
                                   (john, "likes", practice.words["hiking"])}


def test_memories_keep_the_users_language(practice: Practice) -> None:
    everything = practice.mem.get_all(user_id=USER)
    texts = [r["memory"] for r in everything["results"]]
    names = [n for r in everything["relations"] for n in (r["source"], r["destination"]) if n != USER]
    assert len(texts) == 7  # 8 facts, one of them updated in place
    first_call = practice.model.calls[0]
    assert "Keep the user's language" in str(first_call[0].content)
    assert f"user: {practice.says[0]}" in str(first_call[1].content)
    for text in texts + names:
        if practice.lang == "zh":
            assert CJK.search(text) and not LATIN.search(text), text
        else:
            assert not CJK.search(text), text
