"""Export and restore on real Milvus Lite and Kuzu: a user's memory moves to a new data directory (or to another
user) whole, restoring twice doubles nothing, another embedder's document is embedded anew, and a broken document
is one line that changes nothing. The chat's /export and /import commands run through the real entry point."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replays_memory import PromptReadingModel, add_op, answer, delete_op, fresh_memory, reading_model, update_op
from test_agent_cli import assert_clean, chat

from memory import InputError, Memory

SPIDER_MAN = "我的朋友彼得是蜘蛛侠"
LIKES = answer([add_op("Likes badminton", ("USER", "likes", "badminton"))], {"badminton": "activity"})
DISLIKES = answer([update_op("Likes badminton", "Dislikes badminton", ("USER", "dislikes", "badminton"))],
                  {"badminton": "activity"})
SISTER = answer([add_op("Sister Ana lives in Paris", ("Ana", "lives_in", "Paris"))], {"Ana": "person", "Paris": "city"})


@pytest.fixture
def alice(tmp_path: Path) -> Iterator[Memory]:
    """A memory where alice said a contradiction, a Chinese fact (verbatim, with an agent and metadata) and a fact
    she then had deleted: current and invalidated relations, and history of a memory no longer there."""
    model: PromptReadingModel = reading_model()
    model.push(LIKES, DISLIKES, SISTER, answer([delete_op("Sister Ana lives in Paris")]))
    with fresh_memory(tmp_path / "alice", model) as memory:
        memory.add("I like badminton", user_id="alice")
        memory.add("I dislike badminton", user_id="alice")
        memory.add(SPIDER_MAN, user_id="alice", agent_id="tutor", metadata={"topic": "friends"}, infer=False)
        memory.add("My sister Ana lives in Paris", user_id="alice")
        memory.add("Forget what I said about my sister", user_id="alice")
        yield memory


def everything(memory: Memory, user: str) -> dict[str, Any]:
    """What a user would see of their memory: memories (ids and times included), relations, each memory's history."""
    memories = sorted(memory.get_all(user_id=user, limit=1000)["results"], key=lambda m: m["id"])
    relations = sorted((r["source"], r["relationship"], r["destination"], r["valid_from"], r["valid_to"])
                       for r in memory.relations(user_id=user, include_invalid=True))
    return {"memories": memories, "relations": relations,
            "history": {m["id"]: memory.history(m["id"]) for m in memories}}


def test_a_users_memory_moves_to_a_new_data_directory_whole(alice: Memory, tmp_path: Path) -> None:
    before = everything(alice, "alice")
    document = json.dumps(alice.export(user_id="alice"), ensure_ascii=False)
    deleted = [h for h in alice.history_db.of_user("alice") if h["event"] == "DELETE"]
    assert len(before["memories"]) == 2 and len(before["relations"]) == 3 and len(deleted) == 1

    with fresh_memory(tmp_path / "moved") as moved:
        counts = moved.restore(document)
        assert counts == {"memories": 2, "already_remembered": 0, "relations": 3, "history": 5}
        assert everything(moved, "alice") == before
        assert moved.history(deleted[0]["memory_id"]) == alice.history(deleted[0]["memory_id"])
        assert moved.search("谁是蜘蛛侠", user_id="alice")["results"][0]["memory"] == SPIDER_MAN
        found = moved.search("Do I like badminton?", user_id="alice")
        assert found["results"][0]["memory"] == "Dislikes badminton"
        assert [(r["relationship"], r["valid_to"]) for r in found["relations"]] == [("dislikes", None)]

        again = moved.restore(document)
        assert again == {"memories": 0, "already_remembered": 2, "relations": 3, "history": 0}
        assert everything(moved, "alice") == before

        # the restored graph still knows which memory states what: deleting it invalidates its relation
        dislike = next(m for m in before["memories"] if m["memory"] == "Dislikes badminton")
        moved.delete(dislike["id"])
        assert moved.relations(user_id="alice") == []


def test_restored_for_another_user_the_original_is_left_alone(alice: Memory) -> None:
    before = everything(alice, "alice")
    document = alice.export(user_id="alice")
    assert alice.restore(document, user_id="bob")["memories"] == 2
    assert alice.restore(document, user_id="bob")["memories"] == 0
    assert everything(alice, "alice") == before
    bob = everything(alice, "bob")
    assert sorted(m["memory"] for m in bob["memories"]) == sorted(m["memory"] for m in before["memories"])
    assert not {m["id"] for m in bob["memories"]} & {m["id"] for m in before["memories"]}
    assert {m["user_id"] for m in bob["memories"]} == {"bob"}
    assert sorted(r[:3] for r in bob["relations"]) == sorted(("bob", *r[1:3]) if r[0] == "alice" else r[:3]
                                                             for r in before["relations"])
    alice.delete_all(user_id="bob")
    assert everything(alice, "alice") == before


def test_a_memory_the_user_already_has_is_not_doubled(alice: Memory) -> None:
    alice.add(SPIDER_MAN, user_id="carol", agent_id="tutor", infer=False)
    alice.add("I like green tea", user_id="carol", infer=False)
    counts = alice.restore(alice.export(user_id="alice"), user_id="carol")
    assert (counts["memories"], counts["already_remembered"]) == (1, 1)
    texts = [m["memory"] for m in alice.get_all(user_id="carol")["results"]]
    assert sorted(texts) == sorted(["I like green tea", SPIDER_MAN, "Dislikes badminton"])


def test_a_document_from_another_embedder_is_embedded_anew(alice: Memory, tmp_path: Path) -> None:
    for text in ("I like green tea", "My car is a red Volvo", "I work as a nurse"):
        alice.add(text, user_id="alice", infer=False)
    document = alice.export(user_id="alice")
    vectors = [m["vector"] for m in document["memories"]]
    for memory, vector in zip(document["memories"], vectors[1:] + vectors[:1], strict=True):
        memory["vector"] = vector  # each memory gets its neighbour's vector
    for embedder, name in (("same", document["embedding_model"]), ("other", "text-embedding-3-small")):
        with fresh_memory(tmp_path / embedder) as memory:
            memory.restore({**document, "embedding_model": name})
            top = memory.search("Who is Spider-Man?", user_id="alice")["results"][0]["memory"]
            # the same embedder's vectors are used as they are (shuffled here, so the search goes wrong)
            assert (top == SPIDER_MAN) == (embedder == "other"), (embedder, top)


@pytest.mark.parametrize(("change", "complaint"), [
    (lambda d: "{not json", "not JSON"),
    (lambda d: {**d, "format": "mem0"}, "format"),
    (lambda d: {**d, "version": 2}, "version"),
    (lambda d: {**d, "memories": [{**d["memories"][0], "text": ""}]}, "memories.0.text"),
    (lambda d: {**d, "memories": [{**d["memories"][0], "vector": "AAAAAAAAAAA="}]}, "embedding_dims"),
    (lambda d: {**d, "memories": [{**d["memories"][0], "vector": "not base64!"}]}, "base64"),
    (lambda d: {**d, "memories": [{**d["memories"][0], "run_id": "a\tb"}]}, "run_id"),
    (lambda d: {**d, "user_id": ""}, "user_id"),
], ids=["not-json", "format", "version", "empty-text", "vector-size", "vector-bytes", "bad-run-id", "no-user"])
def test_a_broken_document_is_one_line_and_changes_nothing(alice: Memory, change: Any, complaint: str) -> None:
    document = alice.export(user_id="alice")
    alice.add("I like green tea", user_id="bob", infer=False)
    before = everything(alice, "alice"), everything(alice, "bob")
    with pytest.raises(InputError) as error:
        alice.restore(change(document), user_id="bob" if complaint != "user_id" else None)
    assert complaint in str(error.value) and "\n" not in str(error.value)
    assert (everything(alice, "alice"), everything(alice, "bob")) == before


def test_the_chat_exports_and_imports_a_file(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    said = chat(first, f"I like green tea\n{SPIDER_MAN}\n/export ../alice.json\n/export {tmp_path}/no/dir.json\n")
    assert_clean(said)
    assert "Saved 2 memories and 0 relations to ../alice.json." in said.stdout
    assert "cannot write" in said.stdout and "No such file or directory" in said.stdout

    second = tmp_path / "second"
    second.mkdir()
    loaded = chat(second, "/import ../alice.json\n/import ../alice.json\n/import ../missing.json\n/memories\n")
    assert_clean(loaded)
    assert "Loaded 2 memories and 0 relations from ../alice.json." in loaded.stdout
    assert "Loaded 0 memories (2 I already had) and 0 relations" in loaded.stdout
    assert "cannot read ../missing.json" in loaded.stdout
    listed = loaded.stdout.split("What I remember")[1]
    assert "I like green tea" in listed and SPIDER_MAN in listed
