"""Reliability campaigns: crashes mid-write, model endpoint faults, and user isolation under hostile input.

Usage, from the repository root::

    python -m benchmarks.reliability [--trials N] [--json]

- **crash**: a child process opens `Memory` on a fresh data directory and writes in a loop (verbatim adds,
  extracted adds with graph relations, updates, deletes, whole-user erasures; the model is a deterministic
  in-process stand-in), printing every acknowledged write. It is killed with SIGKILL at a random moment, or
  kills itself at a chosen point between two store writes (after the Milvus upsert, before a relation, before
  the history rows, before the journal is closed, inside an erasure, inside the graph rewrite, or during the
  journal replay of the next open). The data directory is then opened again and checked: every acknowledged
  write is there (or gone, for acknowledged deletes), and Milvus, Kuzu and history agree (`check_consistency`).
- **faults**: `add` through the real OpenAI client against a scripted endpoint on 127.0.0.1 that fails:
  500s then success, 429 with Retry-After, a hang past the timeout, a malformed body, a body cut off, an
  answer of the wrong schema. Each ends as it must (success after bounded retries, or one one-line error with
  nothing written) and no earlier memory is harmed.
- **isolation**: random operations of users whose ids are quotes, backslashes, `" or ""=="`, Milvus and
  Cypher fragments, emoji..., each memory tagged with its owner; no read may return another user's memory or
  relation.

Printed: trials, faults injected, acknowledged writes lost, cross-user leaks, store disagreements (the last
three must be 0), and the faults whose outcome was wrong. `--json` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from memory import LLMError, Memory, MemoryConfig
from memory.filters import scope_filter

ROOT = Path(__file__).resolve().parents[1]

HOSTILE = ['" or ""=="', "' or '1'='1", 'x" || user_id != "', "back\\slash", "\\\"", 'quote"s', "it's",
           'user_id == "alice"', 'user_id like "%"', "id in [1,2]", 'metadata["k"] == 1', "true or true",
           "u\") MATCH (n) DETACH DELETE n //", "}) RETURN e //", "' OR 1=1 --", "$u", "{u}", "%s", "%",
           "*", "😀 user 🎉", "爱丽丝", " padded ", "a\\u0022b", "</memories>", "null", "[]", "0"]
CRASH_POINTS = ("upsert", "relation", "record", "commit", "erase", "purge", "replay")
FAULT_KINDS = ("status-then-ok", "429-retry-after", "hang", "malformed", "truncated", "wrong-schema")
THINGS = ["tea", "jazz", "chess", "hiking", "sushi", "yoga", "kites", "opera"]
FRIENDS = ["Ana", "Bruno", "Chen", "Dara", "Emeka"]
CITIES = ["Lisbon", "Osaka", "Quito", "Tallinn"]


# -- the deterministic model of the campaigns ------------------------------------------------------------------
class CampaignModel(BaseChatModel):
    """An extraction model that does what the user's message (a JSON op) asks, reading ids off its prompt.

    The message is `{"op": "add", "text": ..., "rel": [[source, relationship, destination], ...]}`,
    `{"op": "update", "target": <memory text>, "text": ..., "rel": [...]}` or `{"op": "delete", "target": ...}`;
    a target the prompt does not show gives an empty answer. Counts its calls."""

    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "campaign"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls += 1
        text = campaign_answer(str(messages[0].content), str(messages[-1].content))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


def campaign_answer(system: str, conversation: str) -> str:
    """The extraction answer `CampaignModel` gives for this prompt and conversation."""
    spec = json.loads(conversation[conversation.index("{"):conversation.rindex("}") + 1])
    shown = {}
    block = re.search(r"EXISTING MEMORIES \(id: text\):\n(.*?)(?:\n\n|\Z)", system, re.DOTALL)
    for line in (block.group(1).splitlines() if block else []):
        number, sep, text = line.partition(": ")
        if sep and number.isdigit():
            shown[text] = int(number)
    relations = [{"source": s, "relationship": r, "destination": d} for s, r, d in spec.get("rel", [])]
    entities = [{"name": name, "type": "person" if name in FRIENDS else "thing"}
                for s, _, d in spec.get("rel", []) for name in (s, d) if name != "USER"]
    if spec["op"] == "add":
        ops = [{"event": "ADD", "text": spec["text"], "relations": relations}]
    elif spec["target"] not in shown:
        ops = []
    elif spec["op"] == "update":
        ops = [{"event": "UPDATE", "id": shown[spec["target"]], "text": spec["text"], "relations": relations}]
    else:
        ops = [{"event": "DELETE", "id": shown[spec["target"]]}]
    return json.dumps({"memories": ops, "entities": entities}, ensure_ascii=False)


def open_memory(data_dir: Path, llm: BaseChatModel | None = None) -> Memory:
    """A Memory on the embedded stores in `data_dir`, the environment ignored."""
    config = MemoryConfig.from_env({})
    config.data_dir = str(data_dir)
    return Memory(config, llm=llm)


# -- consistency ---------------------------------------------------------------------------------------------
def check_consistency(memory: Memory, user_ids: Iterable[str] = ()) -> list[str]:
    """Every disagreement between Milvus, Kuzu and history for these users (and every user the history or the
    graph knows, and every user with a row in Milvus), as one line each; empty when they agree.

    Checked: no journaled plan left open; every Milvus row has history whose latest event is its text, and every
    memory whose history says it exists is in Milvus; current relations rest only on memories that exist;
    invalidated ones only on memories that exist or have history; no relation without memories; no entity
    without relations; no edge between two users' graphs; each row is found by id and in its user's scope."""
    problems: list[str] = []
    pending = memory.history_db.pending()
    if pending:
        problems.append(f"{len(pending)} journaled write(s) still open after the data directory was opened")
    rows = _all_vector_rows(memory)
    users = set(user_ids) | set(memory.history_db.user_ids()) | set(memory.graph.user_ids())
    users |= {row["user_id"] for row in rows}
    for rel_id, source_user, destination_user in memory.graph.cross_user_relations():
        problems.append(f"relation {rel_id} joins the graphs of users {source_user!r} and {destination_user!r}")
    for user in sorted(users):
        problems += _check_user(memory, user, {r["id"] for r in rows if r["user_id"] == user})
    return problems


def _all_vector_rows(memory: Memory) -> list[dict[str, Any]]:
    iterator = memory.vectors.client.query_iterator(memory.vectors.collection, batch_size=1000, filter='id != ""',
                                                    output_fields=["id", "user_id"])
    rows: list[dict[str, Any]] = []
    try:
        while batch := iterator.next():
            rows.extend(batch)
    finally:
        iterator.close()
    return rows


def _check_user(memory: Memory, user: str, row_ids: set[str]) -> list[str]:
    problems = []
    stored = {r.id: r for r in memory.vectors.list(scope_filter(user), user, None)}
    if set(stored) != row_ids:
        problems.append(f"user {user!r}: {len(row_ids ^ set(stored))} row(s) in Milvus outside the user's scope")
    found = {r.id for r in memory.vectors.get(list(stored))} if stored else set()
    for memory_id in set(stored) - found:
        problems.append(f"memory {memory_id} of {user!r} is listed but not found by id")
    events: dict[str, list[dict[str, Any]]] = {}
    for row in memory.history_db.of_user(user):
        events.setdefault(row["memory_id"], []).append(row)
    for memory_id, record in stored.items():
        if record.user_id != user:
            problems.append(f"memory {memory_id} is in the scope of {user!r} but belongs to {record.user_id!r}")
        last = events.get(memory_id, [None])[-1]
        if last is None:
            problems.append(f"memory {memory_id} of {user!r} is in Milvus but has no history")
        elif last["event"] == "DELETE":
            problems.append(f"memory {memory_id} of {user!r} is in Milvus but its history says it was deleted")
        elif last["new_memory"] != record.text:
            problems.append(f"memory {memory_id} of {user!r}: Milvus and history disagree on its text")
    for memory_id, rows in events.items():
        if memory_id not in stored and rows[-1]["event"] != "DELETE":
            problems.append(f"memory {memory_id} of {user!r} has history saying it exists but is not in Milvus")
    for relation in memory.graph.relations(user, current_only=False, limit=1_000_000):
        label = f"relation {relation.source} -{relation.relationship}-> {relation.destination} of {user!r}"
        if not relation.memory_ids:
            problems.append(f"{label} rests on no memory")
        for memory_id in relation.memory_ids:
            if relation.valid_to is None and memory_id not in stored:
                problems.append(f"{label} is current but its memory {memory_id} is not in Milvus")
            elif memory_id not in stored and memory_id not in events:
                problems.append(f"{label} refers to memory {memory_id}, unknown to Milvus and history")
    for name in memory.graph.orphans(user):
        problems.append(f"entity {name!r} of {user!r} has no relation left")
    return problems


# -- crash campaign: the writing child -------------------------------------------------------------------------
CHILD_USERS = ["alice", 'bob "the" builder', "爱丽丝"]


def _arm(point: str, nth: int) -> None:
    """Make this process SIGKILL itself at the `nth` time it reaches `point` (see CRASH_POINTS)."""
    from memory import graph_store
    from memory.history import History
    from memory.vector_store import MilvusVectorStore

    count = [0]

    def hit() -> None:
        count[0] += 1
        if count[0] >= nth:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def before(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            hit()
            return original(*args, **kwargs)
        setattr(owner, name, wrapped)

    def after(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            hit()
            return result
        setattr(owner, name, wrapped)

    if point == "upsert":
        after(MilvusVectorStore, "upsert")
    elif point == "replay":  # the first store write of a replayed plan (each one writes to Milvus first)
        after(MilvusVectorStore, "upsert")
        after(MilvusVectorStore, "delete")
    elif point == "relation":
        before(graph_store.KuzuGraphStore, "add_relation")
    elif point == "record":
        before(History, "record")
    elif point == "commit":
        before(History, "commit")
    elif point == "erase":
        after(MilvusVectorStore, "delete_user")
    elif point == "purge":
        replace = graph_store.os.replace

        def replacing(source: str, destination: str) -> None:
            if str(source).endswith(".rewrite"):
                hit()
            replace(source, destination)
        graph_store.os.replace = replacing  # type: ignore[assignment]


def writer_child(argv: list[str] | None = None) -> None:
    """The process a crash trial kills: writes in a loop, printing each write as it starts and when acknowledged.

    Lines are JSON: `{"ready": true}`, `{"begin": {...}}`, `{"ack": {...}}`, `{"done": true}`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["verbatim", "infer"], default="infer")
    parser.add_argument("--die-at", default="")
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--erase-rate", type=float, default=0.03, help="share of writes that erase a user")
    parser.add_argument("--stop-file", default="", help="stop cleanly (close, then exit 0) once this file exists")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.die_at:
        point, _, nth = args.die_at.partition(":")
        _arm(point, int(nth or 1))
    memory = open_memory(Path(args.data_dir), CampaignModel())

    def say(**line: Any) -> None:
        print(json.dumps(line, ensure_ascii=False), flush=True)

    import jieba

    jieba.initialize()  # warm up (jieba's dictionary for query keywords, the first embedding) without writing
    for user in CHILD_USERS:
        memory.search("warm up", user_id=user)
    say(ready=True)
    owned: dict[str, dict[str, str]] = {u: {} for u in CHILD_USERS}  # id -> text, per user
    for seq in range(args.ops):
        if args.stop_file and os.path.exists(args.stop_file):
            break
        user = rng.choice(CHILD_USERS)
        mine = owned[user]
        roll = rng.random()
        if roll < args.erase_rate and mine:
            say(begin={"op": "delete_all", "user": user})
            memory.delete_all(user_id=user)
            mine.clear()
            say(ack={"op": "delete_all", "user": user})
        elif roll < args.erase_rate + 0.07 and mine:
            target = rng.choice(sorted(mine))
            say(begin={"op": "delete", "user": user, "id": target})
            memory.delete(target)
            del mine[target]
            say(ack={"op": "delete", "user": user, "id": target})
        elif roll < args.erase_rate + 0.12 and mine:
            target = rng.choice(sorted(mine))
            text = f"Edited note {seq} by hand"
            say(begin={"op": "update", "user": user, "id": target})
            memory.update(target, text)
            mine[target] = text
            say(ack={"op": "update", "user": user, "id": target, "text": text})
        elif args.mode == "verbatim" or roll < 0.45:
            texts = [f"Note {seq}.{i} of the day: {rng.choice(THINGS)} and {rng.choice(CITIES)}"
                     for i in range(rng.randint(1, 3))]
            say(begin={"op": "add", "user": user})
            added = memory.add([{"role": "user", "content": t} for t in texts], user_id=user, infer=False)
            mine.update({r["id"]: r["memory"] for r in added["results"]})
            say(ack={"op": "add", "user": user, "results": added["results"]})
        else:
            spec = _infer_spec(rng, seq, mine)
            say(begin={"op": "infer", "user": user, "target": spec.get("target_id")})
            spec.pop("target_id", None)
            added = memory.add(json.dumps(spec, ensure_ascii=False), user_id=user)
            for result in added["results"]:
                if result["event"] in ("ADD", "UPDATE"):
                    mine[result["id"]] = result["memory"]
                elif result["event"] == "DELETE":
                    mine.pop(result["id"], None)
            say(ack={"op": "infer", "user": user, "results": added["results"]})
    memory.close()
    say(done=True)


def _infer_spec(rng: random.Random, seq: int, mine: dict[str, str]) -> dict[str, Any]:
    thing, friend, city = rng.choice(THINGS), rng.choice(FRIENDS), rng.choice(CITIES)
    relations = [["USER", "likes", f"{thing} club {seq % 5}"]]
    if rng.random() < 0.5:
        relations.append([friend, "lives_in", city])
    roll = rng.random()
    if mine and roll < 0.2:
        target_id = rng.choice(sorted(mine))
        return {"op": "delete", "target": mine[target_id], "target_id": target_id}
    if mine and roll < 0.4:
        target_id = rng.choice(sorted(mine))
        return {"op": "update", "target": mine[target_id], "target_id": target_id,
                "text": f"Fact {seq}: now prefers {thing}", "rel": relations}
    return {"op": "add", "text": f"Fact {seq}: likes {thing}, friend {friend} is in {city}", "rel": relations}


# -- crash campaign: the parent --------------------------------------------------------------------------------
@dataclass
class CrashResult:
    """What one crash trial found."""

    point: str
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    killed: bool = False
    replayed_warnings: int = 0


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "MILVUS_", "EMBEDDER", "EMBEDDING_", "LLM_", "MEMORY_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start_child(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    code = "import sys; from benchmarks.reliability import writer_child; writer_child(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, "--data-dir", str(data_dir), *args], cwd=ROOT,
                            env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(child: subprocess.Popen[str], lines: list[dict[str, Any]], ready: threading.Event) -> None:
    assert child.stdout is not None
    for raw in child.stdout:
        with contextlib.suppress(json.JSONDecodeError):
            line = json.loads(raw)
            lines.append(line)
            if "ack" in line:
                ready.set()
    ready.set()


def run_child(data_dir: Path, *, seed: int, mode: str, kill_after: float | None = None, die_at: str = "",
              ops: int = 10_000, erase_rate: float = 0.03,
              timeout: float = 180) -> tuple[list[dict[str, Any]], bool, str]:
    """Run one writing child to its end, its self-kill or our SIGKILL `kill_after` seconds after its first
    acknowledged write. Returns its lines, whether it was killed, and its stderr."""
    child = _start_child(data_dir, "--seed", str(seed), "--mode", mode, "--die-at", die_at, "--ops", str(ops),
                         "--erase-rate", str(erase_rate))
    lines: list[dict[str, Any]] = []
    ready = threading.Event()
    reader = threading.Thread(target=_collect, args=(child, lines, ready), daemon=True)
    reader.start()
    try:
        if kill_after is not None:
            ready.wait(timeout)
            time.sleep(kill_after)
            child.send_signal(signal.SIGKILL)
        child.wait(timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(10)
    stderr = child.stderr.read() if child.stderr else ""
    if child.stderr:
        child.stderr.close()
    return lines, child.returncode == -signal.SIGKILL, stderr


def expected_state(lines: list[dict[str, Any]]) -> tuple[dict[str, tuple[str, str]], set[str], dict[str, Any]]:
    """From a child's lines: acknowledged memories (id -> (user, text)), acknowledged deletions, and the write in
    flight when it died (its `begin` line without an `ack`), or {}."""
    present: dict[str, tuple[str, str]] = {}
    deleted: set[str] = set()
    in_flight: dict[str, Any] = {}
    for line in lines:
        if "begin" in line:
            in_flight = line["begin"]
            continue
        ack = line.get("ack")
        if not ack:
            continue
        in_flight = {}
        user = ack["user"]
        if ack["op"] == "delete_all":
            gone = {i for i, (u, _) in present.items() if u == user}
            deleted |= gone
            for memory_id in gone:
                del present[memory_id]
        elif ack["op"] == "delete":
            present.pop(ack["id"], None)
            deleted.add(ack["id"])
        elif ack["op"] == "update":
            present[ack["id"]] = (user, ack["text"])
        else:
            for result in ack["results"]:
                if result["event"] in ("ADD", "UPDATE"):
                    present[result["id"]] = (user, result["memory"])
                    deleted.discard(result["id"])
                elif result["event"] == "DELETE":
                    present.pop(result["id"], None)
                    deleted.add(result["id"])
    return present, deleted, in_flight


def verify_after_crash(memory: Memory, lines: list[dict[str, Any]]) -> tuple[int, list[str], list[str]]:
    """(acknowledged writes, those lost, other disagreements) after reopening a crashed child's data directory.

    The write in flight may or may not have landed: only what it could change is exempt (a memory it deletes or
    rewrites, the whole user for an erasure or an extraction that may delete)."""
    present, deleted, in_flight = expected_state(lines)
    acknowledged = sum(1 for line in lines if "ack" in line)
    lost, disagreements = [], []
    for memory_id, (user, text) in present.items():
        uncertain_presence = bool(in_flight) and in_flight["user"] == user and (
            in_flight["op"] == "delete_all" or in_flight.get("id") == memory_id
            or in_flight.get("target") == memory_id) and in_flight["op"] != "update"
        uncertain_text = bool(in_flight) and in_flight["user"] == user and memory_id in (
            in_flight.get("id"), in_flight.get("target"))
        found = memory.get(memory_id)
        if found is None:
            if not uncertain_presence:
                lost.append(f"acknowledged memory {memory_id} of {user!r} ({text!r}) is missing")
        elif found["memory"] != text and not uncertain_text:
            lost.append(f"memory {memory_id} of {user!r} has {found['memory']!r}, acknowledged {text!r}")
    for memory_id in deleted:
        if memory.get(memory_id) is not None:
            disagreements.append(f"memory {memory_id} was acknowledged deleted but came back")
    disagreements += check_consistency(memory, CHILD_USERS)
    return acknowledged, lost, disagreements


def crash_trial(data_dir: Path, *, seed: int, point: str = "kill", mode: str = "infer",
                kill_after: float | None = None) -> CrashResult:
    """One crash trial on a fresh `data_dir`: `point` "kill" (SIGKILL `kill_after` s after start, random if None)
    or one of CRASH_POINTS (the child kills itself there, at a random occurrence)."""
    rng = random.Random(seed)
    result = CrashResult(point=point)
    if point == "kill":
        lines, result.killed, stderr = run_child(data_dir, seed=seed, mode=mode,
                                                 kill_after=kill_after if kill_after is not None
                                                 else rng.uniform(0.0, 2.0))
    elif point == "replay":
        # die before a plan's history rows are written, then die again while the next open replays that plan
        lines, killed, stderr = run_child(data_dir, seed=seed, mode=mode, die_at=f"record:{rng.randint(2, 6)}")
        again, killed_again, stderr2 = run_child(data_dir, seed=seed + 1, mode=mode, die_at="replay:1", ops=0)
        result.killed = killed and killed_again
        stderr += stderr2
        lines += [line for line in again if "ack" in line]
    else:
        erasing = point in ("erase", "purge")
        nth = rng.randint(1, 2) if erasing else rng.randint(1, 8)
        lines, result.killed, stderr = run_child(data_dir, seed=seed, mode=mode, die_at=f"{point}:{nth}", ops=60,
                                                 erase_rate=0.2 if erasing else 0.03)
    if "Traceback" in stderr:
        result.disagreements.append("the writing child failed: " + stderr.strip().splitlines()[-1])
    try:
        memory = open_memory(data_dir, CampaignModel())
    except Exception as exc:
        result.disagreements.append(f"the data directory does not open after the crash: {exc}")
        return result
    try:
        result.acknowledged, result.lost, more = verify_after_crash(memory, lines)
        result.disagreements += more
        if memory.history_db.set_aside_count():
            result.disagreements.append("a journaled write was set aside instead of replayed")
    finally:
        memory.close()
    try:  # opening again must find nothing left to do, and change nothing
        with open_memory(data_dir, CampaignModel()) as again:
            result.disagreements += [f"on a second open: {p}" for p in check_consistency(again, CHILD_USERS)]
    except Exception as exc:
        result.disagreements.append(f"the data directory does not open a second time: {exc}")
    return result


# -- fault campaign --------------------------------------------------------------------------------------------
def _fake_openai() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_openai

    return fake_openai


def fault_trial(data_dir: Path, kind: str, memory: Memory | None = None) -> tuple[bool, str]:
    """`add` through the real OpenAI client against a scripted endpoint that fails as `kind` says (FAULT_KINDS).

    Returns (outcome as expected, what happened). A memory stored before must survive; a failed add must write
    nothing (no memory, relation, history or journal row) and raise one one-line error within its time bound."""
    fake = _fake_openai()
    good = campaign_answer("", json.dumps({"op": "add", "text": "Fact: likes chess",
                                           "rel": [["USER", "likes", "chess"]]}))
    retries, timeout, bound = 0, 1.0, 15.0
    if kind == "status-then-ok":
        script, retries, succeed = [fake.Fault("status", status=500), fake.Fault("status", status=503), good], 2, True
    elif kind == "429-retry-after":
        script, retries, succeed = [fake.Fault("status", status=429, retry_after=1.0), good], 1, True
    elif kind == "hang":
        script, timeout, succeed, bound = [fake.Fault("hang", seconds=30)], 1.0, False, 8.0
    elif kind == "malformed":
        script, succeed = [fake.Fault("malformed")], False
    elif kind == "truncated":
        script, succeed = [fake.Fault("truncated")], False
    elif kind == "wrong-schema":
        wrong = json.dumps({"facts": ["likes chess"], "memories": [{"event": "MERGE", "text": 3}]})
        script, succeed = [wrong, wrong], False
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    with fake.FakeOpenAI(script) as server:
        config = MemoryConfig.from_env({"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.base_url,
                                         "LLM_MODEL": "fake", "LLM_MAX_RETRIES": str(retries),
                                         "LLM_TIMEOUT": str(timeout)})
        config.data_dir = str(data_dir)
        with Memory(config) as mem:
            kept = mem.add("An earlier note about kites", user_id="u", infer=False)["results"][0]["id"]
            started = time.monotonic()
            try:
                added = mem.add("I like chess", user_id="u")
                error = None
            except LLMError as exc:
                added, error = None, str(exc)
            elapsed = time.monotonic() - started
            listed = mem.get_all(user_id="u")
            texts = sorted(r["memory"] for r in listed["results"])
            problems = []
            if mem.get(kept) is None:
                problems.append("the earlier memory was lost")
            if succeed:
                if error or not added or [r["event"] for r in added["results"]] != ["ADD"]:
                    problems.append(f"expected success after retries, got {error or added}")
                if texts != ["An earlier note about kites", "Fact: likes chess"]:
                    problems.append(f"stored {texts}")
                if kind == "429-retry-after" and elapsed < 0.9:
                    problems.append(f"Retry-After not honoured ({elapsed:.2f} s)")
            else:
                if error is None:
                    problems.append(f"expected a one-line error, got {added}")
                elif "\n" in error:
                    problems.append("the error is not one line")
                if texts != ["An earlier note about kites"] or listed["relations"] or mem.history_db.pending():
                    problems.append(f"a failed add wrote something: {texts} {listed['relations']}")
            if elapsed > bound:
                problems.append(f"took {elapsed:.1f} s (bound {bound} s)")
            problems += check_consistency(mem, ["u"])
    what = "; ".join(problems) if problems else f"as expected ({error or 'success after retries'})"
    return not problems, f"{kind}: {what}"


# -- isolation campaign ----------------------------------------------------------------------------------------
class TaggingModel(BaseChatModel):
    """Extraction that stores the user's message as one memory and relates the user to a named thing."""

    @property
    def _llm_type(self) -> str:
        return "tagging"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        conversation = str(messages[-1].content).split("user: ", 1)[1]
        thing = conversation.rsplit(" ", 1)[-1]
        answer = {"memories": [{"event": "ADD", "text": conversation,
                                "relations": [{"source": "USER", "relationship": "owns", "destination": thing}]}],
                  "entities": [{"name": thing, "type": "thing"}]}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(json.dumps(answer, ensure_ascii=False)))])


def tag_of(user: str) -> str:
    """The tag every memory and entity of this user carries (a digest of the id: no two users share one)."""
    return "owner" + hashlib.sha256(user.encode()).hexdigest()[:12] + "x"


def leaks_in(found: dict[str, Any] | list[dict[str, Any]], user: str) -> list[str]:
    """Results (a search/get_all answer or a relations list) that are not this user's."""
    results = found.get("results", []) if isinstance(found, dict) else []
    relations = found.get("relations", []) if isinstance(found, dict) else found
    leaks = [f"{user!r} sees memory {r['memory']!r} of {r['user_id']!r}" for r in results
             if r["user_id"] != user or tag_of(user) not in r["memory"]]
    for relation in relations:
        names = (relation["source"], relation["destination"])
        if not all(name == user or tag_of(user) in name for name in names):
            leaks.append(f"{user!r} sees relation {names}")
    return leaks


def isolation_trial(memory: Memory, seed: int, users: list[str], steps: int = 25) -> tuple[int, int, list[str]]:
    """Random operations of these users on one Memory; returns (operations, leaks, disagreements)."""
    rng = random.Random(seed)
    leaks: list[str] = []
    operations = 0
    for step in range(steps):
        user = rng.choice(users)
        tag = tag_of(user)
        hostile = rng.choice(HOSTILE)
        roll = rng.random()
        operations += 1
        if roll < 0.35:
            memory.add(f"{hostile} note {step} {tag}", user_id=user, infer=False, metadata={"k": hostile})
        elif roll < 0.5:
            memory.add(f"{hostile} has {step} thing{tag}", user_id=user)
        elif roll < 0.65:
            leaks += leaks_in(memory.search(f"{hostile} note", user_id=user, limit=50), user)
        elif roll < 0.75:
            leaks += leaks_in(memory.get_all(user_id=user, limit=1000, filters={"k": hostile}), user)
        elif roll < 0.85:
            leaks += leaks_in(memory.get_all(user_id=user, limit=1000), user)
            leaks += leaks_in(memory.relations(user_id=user, include_invalid=True, limit=1000), user)
        elif roll < 0.95:
            mine = memory.get_all(user_id=user, limit=1000)["results"]
            if mine:
                memory.delete(rng.choice(mine)["id"])
        else:
            memory.delete_all(user_id=user)
    disagreements = check_consistency(memory, users)
    for user in users:  # a final look at everyone
        leaks += leaks_in(memory.get_all(user_id=user, limit=1000), user)
        leaks += leaks_in(memory.relations(user_id=user, include_invalid=True, limit=1000), user)
    return operations, len(leaks), disagreements + leaks


# -- the report ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        yield Path(tmp)


class _Replays(logging.Handler):
    """Counts the journal replays and set-asides `Memory` announces (instead of printing them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.replayed = 0
        self.set_aside = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.replayed += message.startswith("replaying an interrupted memory write")
        self.set_aside += "set aside" in message


def run(trials: int, seed: int = 1, log: Any = None) -> dict[str, Any]:
    """Run the three campaigns with `trials` crash trials, `trials` fault trials and `trials` isolation trials."""
    say = log or (lambda message: None)
    report: dict[str, Any] = {"trials": 0, "faults_injected": 0, "acknowledged_writes_lost": 0,
                              "cross_user_leaks": 0, "store_disagreements": 0, "fault_outcomes_wrong": 0,
                              "crash_trials": 0, "crash_kills": 0, "acknowledged_writes": 0, "journal_replays": 0,
                              "plans_set_aside": 0, "fault_trials": 0, "isolation_trials": 0,
                              "isolation_operations": 0, "examples": []}
    replays = _Replays()
    memory_log = logging.getLogger("memory.memory")
    memory_log.addHandler(replays)
    memory_log.propagate = False
    try:
        _campaigns(report, trials, random.Random(seed), say)
    finally:
        memory_log.removeHandler(replays)
        memory_log.propagate = True
    report["journal_replays"], report["plans_set_aside"] = replays.replayed, replays.set_aside
    report["trials"] = report["crash_trials"] + report["fault_trials"] + report["isolation_trials"]
    report["examples"] = report["examples"][:20]
    return report


def _campaigns(report: dict[str, Any], trials: int, rng: random.Random, say: Any) -> None:
    points = ["kill", *CRASH_POINTS]
    with _workdir() as work:
        for trial in range(trials):
            point = points[trial % len(points)]
            mode = "verbatim" if point == "kill" and trial % 2 else "infer"
            result = crash_trial(work / f"crash-{trial}", seed=rng.randrange(1 << 30), point=point, mode=mode)
            report["crash_trials"] += 1
            report["crash_kills"] += int(result.killed)
            report["faults_injected"] += int(result.killed)
            report["acknowledged_writes"] += result.acknowledged
            report["acknowledged_writes_lost"] += len(result.lost)
            report["store_disagreements"] += len(result.disagreements)
            report["examples"] += (result.lost + result.disagreements)[:3]
            say(f"crash {trial + 1}/{trials} ({point}, {mode}): {result.acknowledged} acknowledged, "
                f"{len(result.lost)} lost, {len(result.disagreements)} disagreements")
        for trial in range(trials):
            kind = FAULT_KINDS[trial % len(FAULT_KINDS)]
            ok, what = fault_trial(work / f"fault-{trial}", kind)
            report["fault_trials"] += 1
            report["faults_injected"] += 1
            report["fault_outcomes_wrong"] += int(not ok)
            if not ok:
                report["examples"].append(what)
            say(f"fault {trial + 1}/{trials}: {what}")
        with open_memory(work / "isolation", TaggingModel()) as memory:
            for trial in range(trials):
                users = [*rng.sample(HOSTILE, 4), f"plain{trial}"]
                users = [f"{u}#{trial}" if i % 2 else u for i, u in enumerate(users)]
                operations, leaks, problems = isolation_trial(memory, rng.randrange(1 << 30), users)
                report["isolation_trials"] += 1
                report["isolation_operations"] += operations
                report["cross_user_leaks"] += leaks
                report["store_disagreements"] += len(problems) - leaks
                report["examples"] += problems[:3]
                say(f"isolation {trial + 1}/{trials}: {operations} operations, {leaks} leaks")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.reliability`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per campaign (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run(max(1, args.trials), args.seed,
                 log=None if args.json else (lambda message: print(message, file=sys.stderr, flush=True)))
    report["seconds"] = round(time.monotonic() - started, 1)
    failed = report["acknowledged_writes_lost"] or report["cross_user_leaks"] or report["store_disagreements"] \
        or report["fault_outcomes_wrong"]
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for key in ("trials", "faults_injected", "acknowledged_writes_lost", "cross_user_leaks",
                    "store_disagreements", "fault_outcomes_wrong"):
            print(f"{key.replace('_', ' ')}: {report[key]}")
        print(f"(crash trials {report['crash_trials']}, of which killed {report['crash_kills']}, "
              f"{report['acknowledged_writes']} acknowledged writes, {report['journal_replays']} journal replays, "
              f"{report['plans_set_aside']} set aside; fault trials {report['fault_trials']}; "
              f"isolation trials {report['isolation_trials']}, {report['isolation_operations']} operations; "
              f"{report['seconds']} s)")
        for example in report["examples"]:
            print("  " + example)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
