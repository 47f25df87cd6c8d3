"""The memory layer on a real Milvus server: the standalone Milvus 2.3.5 of PyPI's `milvus` package.

One server for the whole module (`tests/milvus_server.py`): 127.0.0.1 only, authorization on, a temporary
data directory, stopped at the end whatever happened (and checked to have left no process behind). Each test
opens `Memory` through the seeds' configuration shape (URI + token + database), with the local embedder, a
scripted model, and Kuzu and history in its own temporary directory; the tests share one collection, emptied
before each of them (creating a collection costs ~3 s on this server, mostly loading it).

What is proven here: the memory suite's lifecycle cases (tests/test_memory_lifecycle.py, run unchanged) pass
on the server; Milvus 2.3 has no BM25 function, which is detected and said once, and search works dense-only
plus the graph; `user_id` is the partition key and HNSW the index; a write is seen by the very next read;
memories survive closing and reopening; a user's memory moves from Milvus Lite to the server and back (export,
restore); a wrong token, a missing database, a closed port and a silent port
each give a one-line error naming the setting, within seconds.

Skipped, with the reason, only when the `milvus` package (milvus-server) is not installed.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_memory_lifecycle as lifecycle
import test_memory_transfer as transfer
from milvus_server import MilvusServer, MilvusServerError, closed_port, unavailable_reason
from pymilvus import MilvusClient
from replays_memory import PromptReadingModel, add_op, answer, delete_op, fresh_memory, reading_model, update_op

import memory.vector_store as vector_store
from memory import Memory, StoreError
from memory.records import MemoryRecord
from memory.vector_store import MilvusVectorStore

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"no Milvus server to test against: {unavailable_reason()}")

SERVER_VERSION = (2, 3, 5)


@pytest.fixture(scope="module")
def server() -> Iterator[MilvusServer]:
    """One Milvus server for the module; afterwards, no process of it may be left."""
    milvus = MilvusServer()
    milvus.start()
    group = milvus.process.pid if milvus.process else None
    try:
        yield milvus
    finally:
        milvus.stop()
    assert not _processes_of(group, milvus.data_dir), "the Milvus server left a process behind"
    assert not milvus.data_dir.exists(), "the server's temporary data directory was not removed"


def _processes_of(group: int | None, data_dir: Path) -> list[int]:
    """Live processes in the server's process group (if given) or naming its data directory (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgid = fields[0], int(fields[2])
        if state != "Z" and ((group and pgid == group) or str(data_dir) in cmdline):
            found.append(int(entry.name))
    return found


def server_config(server: MilvusServer, data_dir: Path, collection: str, *, token: str | None = None,
                  db_name: str = "default", url: str | None = None) -> dict[str, Any]:
    """The seeds' configuration shape for a Milvus server (no embedder key: the local embedder)."""
    return {"vector_store": {"provider": "milvus",
                             "config": {"url": url or server.uri, "token": server.token if token is None else token,
                                        "db_name": db_name, "collection_name": collection}},
            "graph_store": {"provider": "kuzu", "config": {"db": str(data_dir / "graph.kuzu")}},
            "data_dir": str(data_dir)}


def open_memory(server: MilvusServer, data_dir: Path, collection: str, llm: Any = None) -> Memory:
    """`Memory.from_config` on the server, with graph and history under `data_dir`."""
    return Memory.from_config(server_config(server, data_dir, collection), llm=llm)


@pytest.fixture(scope="module")
def client(server: MilvusServer) -> Iterator[MilvusClient]:
    """A plain pymilvus client of the server, for looking at it from outside the memory layer."""
    milvus = MilvusClient(uri=server.uri, token=server.token, timeout=5)
    yield milvus
    milvus.close()


@pytest.fixture(scope="module")
def shared_collection() -> str:
    """The collection the module's `Memory`s share (creating one costs ~3 s, mostly its load)."""
    return "memories_" + uuid.uuid4().hex[:8]


@pytest.fixture
def collection(client: MilvusClient, shared_collection: str) -> str:
    """The shared collection, emptied: no row of an earlier test is left, as seen by a "Strong" read."""
    if client.has_collection(shared_collection):
        client.delete(shared_collection, filter='id != ""')
        left = client.query(shared_collection, filter='id != ""', output_fields=["id"], limit=1,
                            consistency_level="Strong")
        assert left == [], "the shared collection could not be emptied"
    return shared_collection


@pytest.fixture
def own_collection(client: MilvusClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A collection name of this test's own; dropped afterwards."""
    name = "t_" + re.sub(r"\W", "_", request.node.name)[:60] + "_" + uuid.uuid4().hex[:8]
    yield name
    if client.has_collection(name):
        client.drop_collection(name)


@pytest.fixture
def model() -> PromptReadingModel:
    """A scripted model that reads memory ids off its prompt."""
    return reading_model()


@pytest.fixture
def mem(server: MilvusServer, tmp_path: Path, collection: str, model: PromptReadingModel) -> Iterator[Memory]:
    """A Memory on the server (its own collection) with Kuzu and history in a temporary directory."""
    with open_memory(server, tmp_path / "data", collection, model) as memory:
        yield memory


def texts(found: dict[str, Any]) -> list[str]:
    """The memory texts of a search or get_all answer, in order."""
    return [r["memory"] for r in found["results"]]


# -- the helper itself (first: it runs before the module's server starts) --------------------------------------
def test_the_helper_stops_a_server_that_does_not_come_up_in_time() -> None:
    """A start that times out still stops everything it started (SIGINT, then SIGKILL to the group) and
    removes its data directory."""
    slow = MilvusServer(start_timeout=1.0, stop_grace=2.0)
    with pytest.raises(MilvusServerError, match="did not answer"):
        slow.start()
    assert slow.process is None
    assert _processes_of(None, slow.data_dir) == []
    assert not slow.data_dir.exists()
    slow.stop()  # idempotent


# -- the memory suite, unchanged, on the server -----------------------------------------------------------------
LIFECYCLE_CASES: list[Callable[..., None]] = [
    lifecycle.test_contradiction_invalidates_the_old_relation_even_when_the_model_does_not_list_it,
    lifecycle.test_contradiction_as_delete_and_add_keeps_the_old_fact_in_history,
    lifecycle.test_duplicate_fact_is_remembered_once,
    lifecycle.test_a_fact_is_a_duplicate_exactly_while_a_memory_of_its_scope_says_it,
    lifecycle.test_update_by_hand_replaces_the_text_everywhere,
    lifecycle.test_history_records_every_change_oldest_first,
    lifecycle.test_delete_erases_the_text_and_the_relations_only_it_supported,
    lifecycle.test_delete_all_erases_one_user_and_no_other,
    lifecycle.test_reset_forgets_everyone_and_keeps_working,
    lifecycle.test_two_users_never_see_each_other,
    lifecycle.test_odd_user_ids_are_stored_and_matched_literally,
    lifecycle.test_newer_of_two_equally_relevant_memories_ranks_first,
    lifecycle.test_metadata_is_kept_and_filters_match_it,
    lifecycle.test_threads_adding_and_searching_at_once_lose_nothing,
]


@pytest.mark.parametrize("case", LIFECYCLE_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_the_memory_lifecycle_suite_passes_on_the_server(case: Callable[..., None], mem: Memory,
                                                          model: PromptReadingModel) -> None:
    """Each case of tests/test_memory_lifecycle.py, its assertions unchanged, with `mem` on the server."""
    assert mem.vectors.is_server
    parameters = case.__code__.co_varnames[:case.__code__.co_argcount]
    case(*[{"mem": mem, "model": model}[name] for name in parameters])


# -- what the server lacks, and how the collection is laid out -----------------------------------------------
def test_no_bm25_is_detected_said_once_and_search_is_dense_plus_graph(server: MilvusServer, tmp_path: Path,
                                                                      collection: str, caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_store, "_WARNED", set())  # as in a fresh process
    caplog.set_level(logging.WARNING, logger="memory.vector_store")
    activity = {"badminton": "activity"}
    dislike = update_op("Likes badminton", "Dislikes badminton", ("USER", "dislikes", "badminton"))
    model = reading_model(answer([add_op("Likes badminton", ("USER", "likes", "badminton"))], activity),
                          answer([dislike], activity))
    with open_memory(server, tmp_path / "one", collection, model) as mem:
        assert mem.vectors.server_version == SERVER_VERSION
        assert mem.vectors.keyword_search is False
        assert mem.vectors.search_keyword("badminton", 'user_id == "u"', "u", 5) == []
        mem.add("I like badminton", user_id="u")
        mem.add("Actually I dislike badminton", user_id="u")
        found = mem.search("Do I like badminton?", user_id="u")
        assert texts(found) == ["Dislikes badminton"]
        assert [(r["source"], r["relationship"], r["destination"]) for r in found["relations"]] == [
            ("u", "dislikes", "badminton")]
    # reopening, and another Memory (its own data directory) on the same server, say nothing more
    with open_memory(server, tmp_path / "one", collection, model):
        pass
    with open_memory(server, tmp_path / "two", collection, model) as other:
        assert other.vectors.keyword_search is False
    warnings = [r for r in caplog.records if r.name == "memory.vector_store" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "\n" not in message
    for part in ("BM25", "Milvus 2.3.5", "2.5", server.uri, "dense"):
        assert part in message, message


def test_user_id_is_the_partition_key_and_hnsw_the_index(mem: Memory, collection: str) -> None:
    client = mem.vectors.client
    info = client.describe_collection(collection)
    fields = {f["name"]: f for f in info["fields"]}
    assert fields["user_id"].get("is_partition_key") is True
    assert not any(f.get("is_partition_key") for name, f in fields.items() if name != "user_id")
    assert "sparse" not in fields and info["consistency_level_name"] == "Session"
    index = client.describe_index(collection, "dense")
    assert (index["index_type"], index["metric_type"], index["M"], index["efConstruction"]) == (
        "HNSW", "COSINE", "16", "200")
    mem.add("Lives in Lyon", user_id="ann", infer=False)
    mem.add("Lives in Oslo", user_id="bob", infer=False)
    assert len(client.list_partitions(collection)) == info["num_partitions"], "no partition was created per user"
    assert texts(mem.search("Where do I live?", user_id="ann")) == ["Lives in Lyon"]
    assert texts(mem.search("Where do I live?", user_id="bob")) == ["Lives in Oslo"]


def test_hnsw_search_on_an_indexed_segment_stays_within_the_user(server: MilvusServer, own_collection: str) -> None:
    """Past 1,024 rows a flushed segment gets its HNSW index: search it with a limit above HNSW's default ef."""
    collection = own_collection
    store = MilvusVectorStore(server.uri, dims=16, collection=collection, token=server.token, is_server=True)
    try:
        rng = np.random.default_rng(7)
        users = ["big"] * 1500 + ["small"] * 30
        records = [MemoryRecord(id=f"r{i}", user_id=user, text=f"row {i}", created_at=i, updated_at=i, event_time=i,
                                hash=f"h{i}") for i, user in enumerate(users)]
        vectors = rng.standard_normal((len(records), 16)).astype(np.float32)
        store.upsert(records, vectors)
        store.client.flush(collection)
        deadline = time.monotonic() + 60
        while store.client.describe_index(collection, "dense")["indexed_rows"] < len(records):
            assert time.monotonic() < deadline, "the HNSW index was not built within 60 s"
            time.sleep(0.5)
        store.client.release_collection(collection)
        store.client.load_collection(collection)  # serve the sealed segments from their index
        found = store.search_dense(vectors[42], 'user_id == "big"', "big", 200)
        assert len(found) == 200 and found[0][0].id == "r42" and found[0][1] > 0.999
        assert {r.user_id for r, _ in found} == {"big"}
        small = store.search_dense(vectors[42], 'user_id == "small"', "small", 200)
        assert len(small) == 30 and {r.user_id for r, _ in small} == {"small"}
        assert len(store.list('user_id == "big"', "big", None)) == 1500
    finally:
        store.close()


# -- read-your-writes, persistence --------------------------------------------------------------------------
def test_a_write_is_seen_by_the_very_next_read(mem: Memory) -> None:
    for i in range(8):
        added = mem.add(f"Visited city number {i} on a long trip", user_id="rw", infer=False)["results"][0]
        assert added["id"] in [r["id"] for r in mem.search(f"city number {i}", user_id="rw", limit=20)["results"]]
        assert mem.get(added["id"])["memory"] == added["memory"]
        mem.update(added["id"], f"Lived in city number {i} for a year")
        assert f"Lived in city number {i} for a year" in texts(mem.search(f"city number {i}", user_id="rw",
                                                                          limit=20))
        mem.delete(added["id"])
        assert mem.get(added["id"]) is None
        assert added["id"] not in [r["id"] for r in mem.search(f"city number {i}", user_id="rw", limit=20)["results"]]
    mem.add("Keeps bees", user_id="rw", infer=False)
    assert texts(mem.get_all(user_id="rw")) == ["Keeps bees"]
    assert mem.delete_all(user_id="rw")["deleted"] == 1
    assert mem.get_all(user_id="rw")["results"] == [] and mem.search("bees", user_id="rw")["results"] == []


def test_memories_survive_closing_and_reopening(server: MilvusServer, tmp_path: Path, collection: str) -> None:
    data_dir = tmp_path / "data"
    model = reading_model(
        answer([add_op("Has a dog named Rex", ("USER", "owns", "Rex"))], {"Rex": "animal"}),
        answer([add_op("Works as a nurse", ("USER", "works_as", "nurse"))], {"nurse": "concept"}),
        answer([delete_op("Works as a nurse")]))
    with open_memory(server, data_dir, collection, model) as mem:
        rex = mem.add("I have a dog called Rex", user_id="p")["results"][0]["id"]
        mem.add("I work as a nurse", user_id="p")
        mem.add("Prefers tea to coffee", user_id="p", infer=False)
        mem.add("Someone else's note", user_id="q", infer=False)
        before = mem.get_all(user_id="p")
    with open_memory(server, data_dir, collection, model) as mem:
        assert mem.get_all(user_id="p") == before
        assert sorted(texts(before)) == ["Has a dog named Rex", "Prefers tea to coffee", "Works as a nurse"]
        assert texts(mem.search("What pet do I have?", user_id="p"))[0] == "Has a dog named Rex"
        assert [h["event"] for h in mem.history(rex)] == ["ADD"]
        mem.add("I stopped working as a nurse", user_id="p")  # the model is shown the reopened memories
        assert sorted(texts(mem.get_all(user_id="p"))) == ["Has a dog named Rex", "Prefers tea to coffee"]
        assert texts(mem.get_all(user_id="q")) == ["Someone else's note"]


def test_a_users_memory_moves_from_milvus_lite_to_the_server_and_back(mem: Memory, tmp_path: Path) -> None:
    """What a user who outgrows one machine does: export from the embedded store, restore on the server."""
    with fresh_memory(tmp_path / "lite", reading_model(transfer.LIKES, transfer.DISLIKES)) as lite:
        lite.add("I like badminton", user_id="alice")
        lite.add("I dislike badminton", user_id="alice")
        lite.add(transfer.SPIDER_MAN, user_id="alice", infer=False)
        before = transfer.everything(lite, "alice")
        assert mem.restore(lite.export(user_id="alice"))["memories"] == 2
    assert transfer.everything(mem, "alice") == before
    assert texts(mem.search("Do I like badminton?", user_id="alice"))[0] == "Dislikes badminton"
    with fresh_memory(tmp_path / "back") as back:
        back.restore(mem.export(user_id="alice"))
        assert transfer.everything(back, "alice") == before


def test_a_quote_laden_user_id_is_matched_literally(mem: Memory) -> None:
    odd = 'x" or ""=="'
    mem.add("Plays the cello", user_id=odd, infer=False)
    mem.add("Plays the drums", user_id="x", infer=False)
    assert texts(mem.search("What instrument do I play?", user_id=odd)) == ["Plays the cello"]
    assert texts(mem.get_all(user_id="x")) == ["Plays the drums"]
    assert mem.delete_all(user_id=odd)["deleted"] == 1
    assert mem.get_all(user_id=odd)["results"] == []
    assert texts(mem.search("What instrument do I play?", user_id="x")) == ["Plays the drums"]


def test_a_database_other_than_default_holds_its_own_collection(server: MilvusServer, client: MilvusClient,
                                                              tmp_path: Path, shared_collection: str) -> None:
    database = "memory_" + uuid.uuid4().hex[:8]
    client.create_database(database)
    try:
        config = server_config(server, tmp_path / "data", shared_collection + "_db", db_name=database)
        with Memory.from_config(config) as mem:
            mem.add("Lives in Tromsø", user_id="d", infer=False)
            assert texts(mem.search("Where do I live?", user_id="d")) == ["Lives in Tromsø"]
            assert shared_collection + "_db" in mem.vectors.client.list_collections()
            mem.vectors.client.drop_collection(shared_collection + "_db")
        assert shared_collection + "_db" not in client.list_collections(), "nothing went to the default database"
    finally:
        client.drop_database(database)


# -- settings that are wrong ----------------------------------------------------------------------------------
def _open_error(config: dict[str, Any]) -> tuple[str, float]:
    began = time.monotonic()
    with pytest.raises(StoreError) as caught:
        Memory.from_config(config)
    return str(caught.value), time.monotonic() - began


def test_a_wrong_or_missing_token_is_one_line_naming_the_token_setting(server: MilvusServer, tmp_path: Path,
                                                                       collection: str) -> None:
    for token in ("root:wrong-password", ""):
        message, seconds = _open_error(server_config(server, tmp_path / "data", "never", token=token))
        assert "\n" not in message and seconds < 5, message
        assert "MILVUS_TOKEN" in message and "vector_store.config.token" in message, message
        assert "wrong-password" not in message, "the secret is not echoed"
    with open_memory(server, tmp_path / "data", collection) as mem:  # the data directory was released each time
        assert mem.vectors.keyword_search is False


def test_a_missing_database_is_one_line_naming_the_database_setting(server: MilvusServer, tmp_path: Path) -> None:
    message, _ = _open_error(server_config(server, tmp_path / "data", "never", db_name="no_such_db"))
    assert "\n" not in message, message
    assert "'no_such_db'" in message and "MILVUS_DB" in message and "vector_store.config.db_name" in message, message


def test_an_unreachable_uri_is_one_line_naming_it_within_seconds(server: MilvusServer, tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{closed_port()}"
    message, seconds = _open_error(server_config(server, tmp_path / "a", "never", url=refused))
    assert "\n" not in message and seconds < 3, (message, seconds)
    assert f"MILVUS_URI={refused}" in message and "vector_store.config.url" in message, message
    # a port that accepts connections but never answers: bounded by the connect timeout, not a minute's hang
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
        message, seconds = _open_error(server_config(server, tmp_path / "b", "never", url=mute))
    assert "\n" not in message and seconds < vector_store.CONNECT_TIMEOUT + 3, (message, seconds)
    assert f"MILVUS_URI={mute}" in message and "no answer within" in message, message
