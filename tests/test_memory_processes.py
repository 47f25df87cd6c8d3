"""Memories outlive the process that wrote them, and a data directory in use by one process is refused to
another with a message naming the holder. The other process runs `Memory()` (the zero-configuration default,
its data directory from MEMORY_DATA_DIR, no model) in a fresh Python interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_memory

WRITE = """
import json
from memory import Memory
mem = Memory()
ids = {}
ids["tea"] = mem.add("I like green tea", user_id="alice", infer=False, metadata={"turn": 1},
                     timestamp="2024-05-01T08:00:00+00:00")["results"][0]["id"]
ids["paris"] = mem.add("I live in Paris", user_id="alice", infer=False)["results"][0]["id"]
ids["gone"] = mem.add("My PIN is 4711", user_id="alice", infer=False)["results"][0]["id"]
ids["bob"] = mem.add("I like black coffee", user_id="bob", infer=False)["results"][0]["id"]
mem.update(ids["paris"], "I live in Lyon")
mem.delete(ids["gone"])
print(json.dumps(ids))
# no close(): a script that simply ends must not lose what it wrote
"""

OPEN_SECOND = """
from memory import Memory, StoreBusyError
try:
    Memory()
except StoreBusyError as exc:
    print("StoreBusyError:", exc)
else:
    print("opened")
"""


def run_python(code: str, data_dir: Path) -> str:
    """Run `code` in a fresh interpreter with MEMORY_DATA_DIR=data_dir and no model configured; its stdout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "MILVUS_", "EMBEDDER", "EMBEDDING_", "LLM_", "MEMORY_"))}
    env["MEMORY_DATA_DIR"] = str(data_dir)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=data_dir.parent,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_memories_survive_a_new_process(data_dir: Path) -> None:
    ids = json.loads(run_python(WRITE, data_dir))  # that process has ended; this one reads what it left
    with make_memory(data_dir) as mem:
        assert sorted(r["memory"] for r in mem.get_all(user_id="alice")["results"]) == ["I like green tea",
                                                                                       "I live in Lyon"]
        assert [r["memory"] for r in mem.get_all(user_id="bob")["results"]] == ["I like black coffee"]
        found = mem.search("tea", user_id="alice")["results"][0]
        assert (found["id"], found["memory"], found["metadata"]) == (ids["tea"], "I like green tea",
                                                                     {"turn": 1, "role": "user"})
        assert found["event_time"] == "2024-05-01T08:00:00+00:00"
        assert [(h["event"], h["new_memory"]) for h in mem.history(ids["paris"])] == [
            ("ADD", "I live in Paris"), ("UPDATE", "I live in Lyon")]
        assert mem.get(ids["gone"]) is None and mem.history(ids["gone"]) == []
        assert "4711" not in str(mem.search("PIN", user_id="alice"))


def test_a_second_process_is_refused_with_the_holders_pid(data_dir: Path) -> None:
    with make_memory(data_dir) as mem:
        kept = mem.add("I like green tea", user_id="u", infer=False)["results"][0]["id"]
        said = run_python(OPEN_SECOND, data_dir)
        assert said.startswith("StoreBusyError:")
        assert f"process {os.getpid()}" in said and str(data_dir) in said
        mem.add("I live in Lyon", user_id="u", infer=False)  # the first process goes on unharmed
        assert mem.search("tea", user_id="u")["results"][0]["id"] == kept
        assert len(mem.get_all(user_id="u")["results"]) == 2
    with make_memory(data_dir) as mem:  # and the data is intact once it is closed
        assert sorted(r["memory"] for r in mem.get_all(user_id="u")["results"]) == ["I like green tea",
                                                                                   "I live in Lyon"]


def test_a_killed_milvus_lite_engine_is_started_again_and_nothing_is_lost(data_dir: Path) -> None:
    """The engine's process dies under an open Memory (killed, out of memory): the next call starts it again
    from its file, so searches, listings and writes go on, and nothing stored before or after is lost."""
    with make_memory(data_dir) as mem:
        mem.add("I like green tea", user_id="u", infer=False)
        for call in (lambda: mem.search("tea", user_id="u")["results"][0]["memory"] == "I like green tea",
                     lambda: len(mem.get_all(user_id="u")["results"]) == 1,
                     lambda: mem.add("I live in Lyon", user_id="u", infer=False)["results"][0]["event"] == "ADD"):
            _kill_engine(data_dir)
            assert call()
        # the engine dies just as a write reaches it (after the add's reads): the write is replayed at once
        insert = mem.vectors.client.insert

        def dying_insert(*args: object, **kwargs: object) -> object:
            _kill_engine(data_dir)
            return insert(*args, **kwargs)

        mem.vectors.client.insert = dying_insert
        assert mem.add("I have a cat", user_id="u", infer=False)["results"][0]["event"] == "ADD"
        assert mem.search("cat", user_id="u")["results"][0]["memory"] == "I have a cat"
    with make_memory(data_dir) as mem:
        assert sorted(r["memory"] for r in mem.get_all(user_id="u")["results"]) == [
            "I have a cat", "I like green tea", "I live in Lyon"]
        assert mem.history_db.pending() == []
        assert mem.vectors.client.query(mem.vectors.collection, filter="", output_fields=["count(*)"])[0][
            "count(*)"] == 3  # no write after a kill was made twice


def _kill_engine(data_dir: Path) -> None:
    engines = [pid for pid in _children() if str(data_dir / "milvus.db") in _cmdline(pid)]
    assert len(engines) == 1
    os.kill(engines[0], signal.SIGKILL)
    os.waitpid(engines[0], 0)


def _children() -> list[int]:
    tasks = Path(f"/proc/{os.getpid()}/task").glob("*/children")
    return [int(pid) for task in tasks for pid in task.read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_an_engine_slow_to_listen_is_waited_for(tmp_path: Path) -> None:
    """milvus_lite takes its engine as started after 0.5 s; a busy machine once needed longer, and the client
    failed on the missing socket; another time the socket's file existed but nothing listened yet (refused).
    The start-up check now waits, while the process runs, until the socket accepts a connection. (A stand-in
    engine: a script that binds its socket after 1 s and listens 1 s later, as the real one does in ~20 ms.)"""
    from memory.vector_store import _EngineProcess

    socket_path = tmp_path / "engine.sock"
    script = tmp_path / "engine.py"
    script.write_text(textwrap.dedent(f"""
        import socket, time
        time.sleep(1.0)
        server = socket.socket(socket.AF_UNIX)
        server.bind({str(socket_path)!r})
        time.sleep(1.0)
        server.listen()
        time.sleep(60)
    """))
    engine = _EngineProcess([sys.executable, str(script), f"unix:{socket_path}"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # what milvus_lite reads as "started"
            engine.wait(timeout=0.5)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(socket_path))  # refused if nothing listens yet
    finally:
        engine.kill()
        engine.wait()
