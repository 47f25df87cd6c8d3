"""Crash mid-write: a writing process is killed with SIGKILL (at a random moment, or at a chosen point between
two store writes) and the data directory is opened again: it opens, every acknowledged write is there, and
Milvus, Kuzu and history agree. Also: replaying a journaled plan is idempotent, and a plan that cannot be
replayed is set aside with one warning instead of stopping the data directory from opening.

The campaigns (`benchmarks.reliability`) run the writer in a child process; these tests run a few trials, the
report script dozens.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kuzu
import pytest
from conftest import make_memory
from pymilvus import MilvusClient
from replays_memory import PromptReadingModel, add_op, answer, delete_op, reading_model, update_op

from benchmarks.reliability import (
    CHILD_USERS,
    _child_env,
    _collect,
    _start_child,
    check_consistency,
    crash_trial,
    expected_state,
    open_memory,
    verify_after_crash,
)
from memory import Memory, pipeline
from memory.records import MemoryRecord, now_ms


def test_a_random_kill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Verbatim and extracted adds, updates, deletes and erasures of three users; SIGKILL at a random moment."""
    result = crash_trial(tmp_path / "data", seed=11, point="kill", mode="infer")
    assert result.killed, "the writer was killed mid-run"
    assert result.acknowledged > 0
    assert result.lost == []
    assert result.disagreements == []


@pytest.mark.parametrize("point", ["relation", "purge", "replay"])
def test_a_kill_between_two_store_writes_is_repaired_at_the_next_open(tmp_path: Path, point: str) -> None:
    """relation: Milvus has the memory, the graph only part of it; purge: inside an erasure (Milvus erased),
    during the graph rewrite; replay: a second kill while the next open replays the journal. (The report
    script also kills after the Milvus upsert, before the history rows, before the journal is closed and
    inside the Milvus erasure.)"""
    result = crash_trial(tmp_path / "data", seed=len(point), point=point)
    assert result.killed, f"the writer reached {point} and died there"
    assert result.lost == []
    assert result.disagreements == []


def test_the_expectation_counts_acknowledged_writes_and_exempts_only_the_one_in_flight() -> None:
    lines: list[dict[str, Any]] = [
        {"begin": {"op": "add", "user": "a"}},
        {"ack": {"op": "add", "user": "a", "results": [{"id": "1", "memory": "one", "event": "ADD"}]}},
        {"ack": {"op": "add", "user": "a", "results": [{"id": "2", "memory": "two", "event": "ADD"}]}},
        {"ack": {"op": "delete", "user": "a", "id": "2"}},
        {"ack": {"op": "update", "user": "a", "id": "1", "text": "uno"}},
        {"ack": {"op": "infer", "user": "b", "results": [{"id": "3", "memory": "tres", "event": "ADD"}]}},
        {"begin": {"op": "delete_all", "user": "b"}},
    ]
    present, deleted, in_flight = expected_state(lines)
    assert present == {"1": ("a", "uno"), "3": ("b", "tres")}
    assert deleted == {"2"}
    assert in_flight == {"op": "delete_all", "user": "b"}


# -- the journal, in process ---------------------------------------------------------------------------------
def snapshot(mem: Memory, users: list[str]) -> dict[str, Any]:
    """Everything the three stores hold for these users, comparable with ==."""
    state: dict[str, Any] = {}
    for user in users:
        state[user] = {
            "rows": sorted((r.id, r.text, r.hash, r.updated_at, r.event_time, json.dumps(r.metadata, sort_keys=True))
                           for r in mem.vectors.list(f'user_id == {json.dumps(user)}', user, None)),
            "relations": sorted((r.id, r.source, r.relationship, r.destination, str(r.valid_to), tuple(r.memory_ids))
                                for r in mem.graph.relations(user, current_only=False, limit=10_000)),
            "entities": sorted((e.id, e.name, e.type) for e in mem.graph.entities(user)),
            "history": [tuple(h.values()) for h in mem.history_db.of_user(user)],
        }
    return state


def test_replaying_any_plan_again_changes_nothing(data_dir: Path) -> None:
    """Each write's plan, applied a second and a third time right after it (as a replay would after a crash
    before the journal was closed), leaves the three stores exactly as they were."""
    model: PromptReadingModel = reading_model()
    plans: list[dict[str, Any]] = []
    with make_memory(data_dir, model) as mem:
        begin = mem.history_db.begin

        def keep(plan_id: str, user_id: str, plan: dict[str, Any]) -> None:
            plans.append(json.loads(json.dumps(plan)))
            begin(plan_id, user_id, plan)
        mem.history_db.begin = keep  # type: ignore[method-assign]

        def replay_last_twice() -> None:
            before = snapshot(mem, ["u", "v"])
            for _ in range(2):
                pipeline.apply_plan(plans[-1], mem.vectors, mem.graph, mem.history_db)
            assert snapshot(mem, ["u", "v"]) == before, plans[-1]

        def likes() -> None:
            model.push(answer([add_op("Likes badminton", ("USER", "likes", "badminton")),
                               add_op("Friend John likes badminton", ("John", "likes", "badminton"))],
                              {"badminton": "activity", "John": "person"}))
            mem.add("I like badminton, my friend John too", user_id="u")

        def now_dislikes() -> None:
            model.push(answer([update_op("Likes badminton", "Dislikes badminton",
                                         ("USER", "dislikes", "badminton"))], {"badminton": "activity"}))
            mem.add("Actually I now dislike badminton", user_id="u")

        def forget_john() -> None:
            model.push(answer([delete_op("Friend John likes badminton")]))
            mem.add("Forget John", user_id="u")

        def notes() -> None:
            mem.add([{"role": "user", "content": "note one"}, {"role": "user", "content": "note two"}],
                    user_id="v", infer=False)

        def edit() -> None:
            first = next(r for r in mem.get_all(user_id="v")["results"] if r["memory"] == "note one")
            mem.update(first["id"], "note one, edited")

        def forget_edited() -> None:
            edited = next(r for r in mem.get_all(user_id="v")["results"] if r["memory"] == "note one, edited")
            mem.delete(edited["id"])

        steps = [likes, now_dislikes, forget_john, notes, edit, forget_edited, lambda: mem.delete_all(user_id="u")]
        for step in steps:
            step()
            replay_last_twice()
        assert len(plans) == len(steps)
        assert check_consistency(mem, ["u", "v"]) == []
        assert [r["memory"] for r in mem.get_all(user_id="v")["results"]] == ["note two"]


def test_a_plan_left_open_is_applied_at_the_next_open(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with make_memory(data_dir) as mem:
        kept = mem.add("I keep this", user_id="u", infer=False)["results"][0]["id"]
        plan = pipeline.new_plan("u", "user", now_ms())
        record = MemoryRecord(id="00000000-0000-0000-0000-00000000feed", user_id="u", text="Written before the crash",
                              created_at=plan["time"], updated_at=plan["time"], event_time=plan["time"])
        pipeline.add_upsert(plan, record, mem.embedder.embed_array([record.text])[0], "ADD", None)
        mem.history_db.begin(plan["id"], "u", plan)  # journaled, then "the process died" before applying it
    with caplog.at_level(logging.WARNING, logger="memory.memory"), make_memory(data_dir) as mem:
        assert mem.get(record.id)["memory"] == "Written before the crash"
        assert mem.get(kept) is not None
        assert [h["event"] for h in mem.history(record.id)] == ["ADD"]
        assert check_consistency(mem, ["u"]) == []
    assert [r.getMessage() for r in caplog.records if r.name == "memory.memory"] == [
        f"replaying an interrupted memory write ({plan['id']})"]


def test_a_plan_that_cannot_be_replayed_is_set_aside_and_the_rest_goes_on(
        data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with make_memory(data_dir) as mem:
        kept = mem.add("I keep this", user_id="u", infer=False)["results"][0]["id"]
        good = pipeline.new_plan("u", "user", now_ms() + 1)
        record = MemoryRecord(id="00000000-0000-0000-0000-00000000cafe", user_id="u", text="The good plan",
                              created_at=good["time"], updated_at=good["time"], event_time=good["time"])
        pipeline.add_upsert(good, record, mem.embedder.embed_array([record.text])[0], "ADD", None)
        broken = pipeline.new_plan("u", "user", now_ms())
        broken["upserts"] = [{"record": {"id": "x", "user_id": "u", "text": "bad"}, "vector": "AAAA"}]  # 1 dim
        mem.history_db.begin(broken["id"], "u", broken)
        mem.history_db.begin("not-json", "u", {})
        mem.history_db._db.execute("UPDATE journal SET plan = '{\"cut off' WHERE id = 'not-json'")
        mem.history_db.begin(good["id"], "u", good)
    with caplog.at_level(logging.WARNING, logger="memory.memory"), make_memory(data_dir) as mem:
        assert mem.get(record.id)["memory"] == "The good plan", "the plans after a bad one are still replayed"
        assert mem.get(kept) is not None and mem.get("x") is None
        assert mem.history_db.pending() == [] and mem.history_db.set_aside_count() == 2
        assert check_consistency(mem, ["u"]) == []
        mem.add("and it keeps working", user_id="u", infer=False)
    warnings = [r.getMessage() for r in caplog.records if r.name == "memory.memory" and "set aside" in r.getMessage()]
    assert len(warnings) == 2 and all("\n" not in w and "journal_failed" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memory.memory"), make_memory(data_dir) as mem:
        assert len(mem.get_all(user_id="u")["results"]) == 3
    assert [r for r in caplog.records if r.name == "memory.memory"] == [], "a set-aside plan is not retried"
    with make_memory(data_dir) as mem:  # erasing the user also erases the set-aside plans (they hold text)
        mem.delete_all(user_id="u")
        assert mem.history_db.set_aside_count() == 0


def test_check_consistency_reports_each_kind_of_disagreement(data_dir: Path) -> None:
    """The checker is not blind: damage made by hand to one store at a time is reported."""
    model = reading_model()
    with make_memory(data_dir, model) as mem:
        model.push(answer([add_op("Likes kites", ("USER", "likes", "kites"))], {"kites": "thing"}))
        kites = mem.add("I like kites", user_id=CHILD_USERS[0])["results"][0]["id"]
        plain = mem.add("A plain note", user_id=CHILD_USERS[0], infer=False)["results"][0]["id"]
        assert check_consistency(mem, CHILD_USERS) == []
        mem.history_db.erase_memories([plain])  # Milvus keeps a memory that history forgot
        mem.vectors.delete([kites], CHILD_USERS[0])  # history and a current relation keep a memory Milvus lost
        mem.graph.resolve_entity(CHILD_USERS[0], "Lonely", "thing", None)  # an entity with no relation
        problems = check_consistency(mem, CHILD_USERS)
    assert any(f"memory {plain}" in p and "no history" in p for p in problems)
    assert any(f"memory {kites}" in p and "not in Milvus" in p for p in problems)
    assert any("-likes-> kites" in p and "current" in p for p in problems)
    assert any("'Lonely'" in p for p in problems)


# -- two processes -------------------------------------------------------------------------------------------
SECOND_PROCESS = """
import json, sys
import kuzu
from pymilvus import MilvusClient
from memory import Memory, StoreBusyError
data = sys.argv[1]
said = {}
try:
    Memory()
    said["memory"] = "opened"
except StoreBusyError as exc:
    said["memory"] = str(exc)
try:
    kuzu.Database(data + "/graph.kuzu")
    said["kuzu"] = "opened"
except RuntimeError as exc:
    said["kuzu"] = str(exc).splitlines()[0]
try:
    MilvusClient(data + "/milvus.db").list_collections()
    said["milvus"] = "opened"
except Exception as exc:
    said["milvus"] = type(exc).__name__
print(json.dumps(said))
"""


def test_a_second_process_is_refused_by_every_store_and_harms_nothing(tmp_path: Path) -> None:
    """While a first process writes, a second one tries `Memory()` on the same data directory and, going round
    our lock, Kuzu and Milvus Lite directly: all three refuse. The first goes on to the end; afterwards every
    acknowledged write is there, the stores agree, and the raw stores open and hold exactly that."""
    data = tmp_path / "data"
    stop = tmp_path / "stop"
    child = _start_child(data, "--seed", "5", "--mode", "infer", "--stop-file", str(stop))
    lines: list[dict[str, Any]] = []
    first_ack = threading.Event()
    reader = threading.Thread(target=_collect, args=(child, lines, first_ack), daemon=True)
    reader.start()
    try:
        assert first_ack.wait(120)
        env = {**_child_env(), "MEMORY_DATA_DIR": str(data)}
        second = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(data)], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        still_writing = child.poll() is None
        acknowledged_meanwhile = sum("ack" in line for line in lines)
        deadline = time.monotonic() + 60
        while sum("ack" in line for line in lines) <= acknowledged_meanwhile and time.monotonic() < deadline:
            time.sleep(0.05)  # the first process goes on writing after the refusals
        stop.touch()
        assert child.wait(180) == 0, child.stderr.read() if child.stderr else ""
    finally:
        if child.poll() is None:
            child.kill()
    reader.join(10)
    assert still_writing, "the second process tried while the first was writing"
    said = json.loads(second.stdout.strip().splitlines()[-1])
    assert said["memory"].startswith(f"the memory data in {data} is in use by process {child.pid}")
    assert "Could not set lock" in said["kuzu"] and said["milvus"] != "opened"
    assert lines[-1] == {"done": True}
    assert sum("ack" in line for line in lines) > acknowledged_meanwhile, "the first process kept writing"
    present, _, _ = expected_state(lines)
    with open_memory(data) as mem:
        acknowledged, lost, disagreements = verify_after_crash(mem, lines)
        assert acknowledged > 0 and lost == [] and disagreements == []
        relations = sum(len(mem.relations(user_id=u, include_invalid=True, limit=10_000)) for u in CHILD_USERS)
    database = kuzu.Database(str(data / "graph.kuzu"))
    try:
        result = kuzu.Connection(database).execute("MATCH ()-[r:RELATES]->() RETURN count(*)")
        assert result.get_next()[0] == relations > 0
    finally:
        database.close()
    client = MilvusClient(str(data / "milvus.db"))
    try:
        client.load_collection("memories")
        rows = client.query("memories", filter='id != ""', output_fields=["id"])
        assert sorted(r["id"] for r in rows) == sorted(present)
    finally:
        client.close()
    with sqlite3.connect(data / "history.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


OPEN_AND_READ = """
import json
from memory import Memory
with Memory() as mem:
    print(json.dumps([r["memory"] for r in mem.get_all(user_id="u")["results"]]))
"""


def test_a_closed_memory_leaves_the_data_directory_to_another_process(tmp_path: Path) -> None:
    """close() releases every lock (ours, Kuzu's and Milvus Lite's, whose engine process outlives its client)
    while this process goes on running."""
    data = tmp_path / "data"
    with open_memory(data) as mem:
        mem.add("Written by the first process", user_id="u", infer=False)
    env = {**_child_env(), "MEMORY_DATA_DIR": str(data)}
    second = subprocess.run([sys.executable, "-c", OPEN_AND_READ], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout.strip().splitlines()[-1]) == ["Written by the first process"]
    with open_memory(data) as mem:  # and this process can open it again
        assert len(mem.get_all(user_id="u")["results"]) == 1
