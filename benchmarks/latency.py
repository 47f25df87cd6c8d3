"""Latency of the memory layer and the agent on the embedded defaults, with a scripted instant model.

Usage, from the repository root::

    python -m benchmarks.latency [--memories 1000,10000] [--users 10] [--queries 200] [--entities 1000] [--json]
                                 [--embedding-model multilingual-e5-small | use-multilingual-v3]

For each size N in `--memories` (ascending), every one of `--users` users holds N synthetic memories (added
with `add(infer=False)` in batches, no manual flush), then one user is searched with varied queries. Reported:

- `search_ms_p50`, `search_ms_p95` (largest size) and `search_ms_p95_at` ({size: p95}): full `search()` calls,
  query embedding, dense, BM25 keyword and graph parts included;
- `floor_ms_p50`: the same embedder embedding the query plus a numpy brute-force top-k over that user's
  stored vectors, what no store can beat; `search_over_floor` = search_ms_p50 / floor_ms_p50;
- `add_raw_per_s`: `add(infer=False)` throughput in memories per second;
- `add_overhead_ms_p95` (and `_p50`): `add(infer=True)` with an instant scripted model (everything but the model);
- `add_floor_ms_p50`, `add_floor_ms_p95`: what such an add cannot do without, in the same run: the same embedder
  embedding the message (to find the related memories), a numpy brute-force top-k over the user's vectors, and the
  new fact's embedding (to store it); `add_over_floor` = add p50 / floor p50;
- `update_overhead_ms_p95` (measured last): the same, where the model's answer updates a memory shown to it (its
  old row is deleted from the collection, which costs Milvus Lite time in proportion to every user's rows);
- `turn_overhead_ms_p95`: one agent turn (recall + respond + memorize hand-off) with instant models, as the
  user waits for it; the background memory write is waited for between turns, outside the timing;
- `cold_start_s`: a new `python -m agent` process on a terminal (a pty), on the benchmark's memory (every user's
  rows), until its first prompt; `first_reply_s`: until the (offline) reply to a message typed at that prompt at
  once, the stores opening in the background (the Milvus Lite engine reads every row of its file);
  `reopened_peak_rss_mb`: that chat's peak resident memory with its engine's, once it has replied (the engine holds
  more per row after reading its file than after live inserts);
- `peak_rss_mb`: peak resident memory of this process plus the Milvus Lite engine's child process (all users'
  stores open), read before the floor's numpy matrix exists; `engine_peak_rss_mb`: the engine's share;
  `imports_rss_mb`: a new Python process that only imports what this one and a chat import (no data, no model);
  `vectors_mb`: the stored vectors as float32, the least a store that keeps them in memory holds;
- `llm_calls_per_add`, `llm_calls_per_search`, `memory_context_tokens` (the recalled-memory block of the
  prompt at default settings, estimated as characters / 4 for English text);
- last, once the searched user's graph holds `--entities` more entities (as years of conversations leave, each
  related to the user; written by the graph store with their names embedded): `search_ms_p95_large_graph` and
  `add_overhead_ms_p95_large_graph`, and `graph_entities`, how many the user's graph holds then (fewer than
  asked for where the embedder finds two names alike enough to be one entity).
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import random
import resource
import select
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from rich.console import Console
from rich.table import Table

from agent.context import Context
from agent.graph import TURN_DURABILITY, build_graph
from agent.nodes import system_prompt
from agent.writer import MemoryWriter
from memory import Memory, MemoryConfig
from memory.config import LOCAL_EMBEDDER_MODEL, LOCAL_EMBEDDERS
from memory.embeddings import cores_for, embed
from memory.filters import scope_filter

NAMES = ["Alice", "Bob", "Chen", "Dana", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
PLACES = ["Paris", "Lyon", "Oslo", "Kyoto", "Lima", "Cairo", "Austin", "Porto", "Seoul", "Dublin"]
THINGS = ["hiking", "badminton", "jazz", "sushi", "chess", "painting", "running", "pottery", "sailing", "yoga",
          "thrillers", "gardening", "photography", "baking", "cycling", "climbing"]
TEMPLATES = ["Likes {thing}", "Dislikes {thing}", "Friend {name} lives in {place}", "Visited {place} in {year}",
             "Has a colleague named {name} who enjoys {thing}", "Wants to learn {thing} next year",
             "Went to {place} with {name} for {thing}", "Sister {name} is moving to {place}",
             "Started {thing} lessons in {year}", "Plans a trip to {place} to try {thing}"]
QUERIES = ["What do I like?", "Where does {name} live?", "When did I visit {place}?", "Who enjoys {thing}?",
           "What should I do in {place}?", "Tell me about {name}", "Do I like {thing}?"]
EXTRACTION = json.dumps({"memories": [{"event": "ADD", "text": "Enjoys {thing} with {name}", "relations": [
    {"source": "USER", "relationship": "enjoys", "destination": "{thing}"}]}],
    "entities": [{"name": "{thing}", "type": "activity"}]})
# The same fact as an update of the first memory shown (a contradiction or a refinement of what was remembered).
UPDATE = EXTRACTION.replace('"event": "ADD"', '"event": "UPDATE", "id": 0')


class InstantModel(BaseChatModel):
    """Answers at once: a fixed chat reply, or a valid extraction when asked to extract (an update of the first
    memory shown when `updates`)."""

    calls: int = 0
    updates: bool = False

    @property
    def _llm_type(self) -> str:
        return "instant"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls += 1
        if "long-term memory of an assistant" in str(messages[0].content):
            rng = random.Random(self.calls)
            text = (UPDATE if self.updates else EXTRACTION).replace("{thing}", rng.choice(THINGS)).replace(
                "{name}", rng.choice(NAMES))
        else:
            text = "Sure, noted."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


def _fill(template: str, rng: random.Random) -> str:
    return template.format(name=rng.choice(NAMES), place=rng.choice(PLACES), thing=rng.choice(THINGS),
                           year=rng.randint(2001, 2025))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of values (ms)."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def ingest(memory: Memory, users: list[str], start: int, stop: int) -> float:
    """Give every user memories number start..stop-1; returns memories per second."""
    count, began = 0, time.perf_counter()
    for user in users:
        rng = random.Random(f"{user}:{start}")
        new = [_fill(rng.choice(TEMPLATES), rng) + f" (note {i})" for i in range(start, stop)]
        for offset in range(0, len(new), 250):
            batch = new[offset:offset + 250]
            memory.add([{"role": "user", "content": t} for t in batch], user_id=user, infer=False)
            count += len(batch)
    return count / (time.perf_counter() - began)


def forget_query_vectors(memory: Memory) -> None:
    """Empty the memory's cache of query embeddings: the benchmark's few query templates repeat, while a user's
    next message is new, so every timed search embeds its query."""
    memory._query_vectors.clear()


def time_search(memory: Memory, user: str, queries: list[str]) -> list[float]:
    """Wall time of each search (ms)."""
    times = []
    for query in queries:
        forget_query_vectors(memory)
        began = time.perf_counter()
        memory.search(query, user_id=user, limit=10)
        times.append((time.perf_counter() - began) * 1000)
    return times


def time_floor(memory: Memory, user: str, queries: list[str]) -> list[float]:
    """Embedding the query (on as many cores as a search would) plus numpy brute-force top-10 over the user's stored
    vectors (ms)."""
    matrix = _stored_matrix(memory, user)
    vectors, embed_ms = _embed_each(memory, queries, query=True)
    return [embedded + _top_k_ms(matrix, vector) for vector, embedded in zip(vectors, embed_ms, strict=True)]


def time_add_floor(memory: Memory, user: str, n: int) -> list[float]:
    """What any add of `time_adds`' kind must compute (ms): the message's query embedding and a numpy brute-force
    top-10 over the user's stored vectors (the related memories the model is shown), and the new fact's passage
    embedding (the vector stored), each embedding on as many cores as an add's would take. No store, no graph."""
    matrix = _stored_matrix(memory, user)
    messages = add_messages(n)
    facts = [f"Enjoys {thing} with {name}" for thing, name in _add_subjects(n)]
    vectors, message_ms = _embed_each(memory, messages, query=True)
    _, fact_ms = _embed_each(memory, facts, query=False)
    return [embedded + _top_k_ms(matrix, vector) + fact
            for vector, embedded, fact in zip(vectors, message_ms, fact_ms, strict=True)]


def _stored_matrix(memory: Memory, user: str) -> np.ndarray:
    """The user's stored vectors, one row each."""
    stored = memory.vectors.vectors([r.id for r in memory.vectors.list(scope_filter(user), user, None)])
    return np.stack(list(stored.values()))


def _embed_each(memory: Memory, texts: list[str], *, query: bool) -> tuple[list[np.ndarray], list[float]]:
    """Each text embedded alone on as many cores as `cores_for` gives it now, and each one's time (ms). All the
    embeddings are timed before any top-k (`_top_k_ms`): numpy's multi-threaded `matrix @ vector` leaves a BLAS
    thread spinning for a while, which `idle_core` sees as a busy core, so interleaving them would make the floor's
    texts embed on one core where a search's or an add's take two."""
    vectors, times = [], []
    for text in texts:
        began = time.perf_counter()
        vectors.append(embed(memory.embedder, [text], query=query,
                             cores=cores_for(memory.embedder, [text], query=query))[0])
        times.append((time.perf_counter() - began) * 1000)
    return vectors, times


def _top_k_ms(matrix: np.ndarray, vector: np.ndarray, k: int = 10) -> float:
    """Time (ms) of a numpy brute-force top-k of `vector` over the rows of `matrix`."""
    began = time.perf_counter()
    scores = matrix @ vector
    top = np.argpartition(-scores, k)[:k]
    top[np.argsort(-scores[top])]
    return (time.perf_counter() - began) * 1000


def _add_subjects(n: int) -> list[tuple[str, str]]:
    """The (thing, name) of each of the benchmark's `n` adds, always the same."""
    rng = random.Random(7)
    return [(rng.choice(THINGS), rng.choice(NAMES)) for _ in range(n)]


def add_messages(n: int) -> list[str]:
    """The messages of the benchmark's `n` adds: a new fact each ("I really enjoy sailing with Bob.")."""
    return [f"I really enjoy {thing} with {name}." for thing, name in _add_subjects(n)]


def time_adds(memory: Memory, model: InstantModel, user: str, n: int,
              expect: str | None = None) -> tuple[list[float], float]:
    """add(infer=True) times with the instant model (ms), and LLM calls per add; with `expect`, the adds must have
    made that event (or NONE, where the text was remembered already), else the benchmark timed something else."""
    before, times, events = model.calls, [], set()
    for message in add_messages(n):
        began = time.perf_counter()
        result = memory.add(message, user_id=user)
        times.append((time.perf_counter() - began) * 1000)
        events.update(r["event"] for r in result["results"])
    if expect and (expect not in events or events - {expect, "NONE"}):
        raise RuntimeError(f"adds timed as {expect} made {sorted(events)}")
    return times, (model.calls - before) / n


def time_turns(memory: Memory, model: InstantModel, user: str, queries: list[str]) -> tuple[list[float], int]:
    """One agent turn as the user waits for it (ms), and the memory-context tokens of the last prompt."""
    writer = MemoryWriter(memory)
    graph = build_graph(memory, model, writer)
    thread = {"configurable": {"thread_id": "bench"}}
    times, tokens = [], []
    for query in queries:
        writer.wait()
        forget_query_vectors(memory)
        began = time.perf_counter()
        state = graph.invoke({"messages": [HumanMessage(query)]}, thread, context=Context(user_id=user),
                             durability=TURN_DURABILITY)
        times.append((time.perf_counter() - began) * 1000)
        block = system_prompt(state.get("recalled", []), state.get("relations", [])).split("<memories>")[1]
        tokens.append(len(block) / 4)
    writer.wait()
    writer.close()
    return times, int(np.mean(tokens))


def grow_graph(memory: Memory, user: str, count: int) -> int:
    """Give the user's graph `count` more entities, each related to the user, through the graph store with the
    names embedded (as `add` writes them); returns how many entities the user's graph holds."""
    # varied names: near-identical ones would be merged into one entity (a cosine of 0.92 or more)
    names = [f"{NAMES[i % len(NAMES)]}'s {THINGS[i // len(NAMES) % len(THINGS)]} club of "
             f"{PLACES[i // len(NAMES) // len(THINGS) % len(PLACES)]} no. {i}" for i in range(count)]
    graph, now = memory.graph, datetime.now(UTC)
    me = graph.user_node(user)
    for name, vector in zip(names, embed(memory.embedder, names), strict=True):
        graph.add_relation(user, me, "member_of", graph.resolve_entity(user, name, "organization", vector), "", now)
    return len(graph.entities(user))


def cold_start(data_dir: Path, embedding_model: str) -> tuple[float, float, float]:
    """Seconds from starting `python -m agent` on the memory in `data_dir` on a pty to its first prompt, and to the
    (offline) reply to a message typed at that prompt at once (the stores open in the background meanwhile); and the
    peak resident memory (MB) of that chat process and its Milvus Lite engine once it has replied."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["MEMORY_DATA_DIR"] = str(data_dir)
    env["EMBEDDING_MODEL"] = embedding_model
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "agent", "--user", "bench"], stdin=slave, stdout=slave,
                               stderr=slave, env=env, cwd=data_dir, close_fds=True)
    seen, marks, chat_mb = b"", [], 0.0
    try:
        for wanted, then in ((b"You", b"hello\r"), (b"Assistant", b"quit\r")):
            while wanted not in seen and time.perf_counter() - began < 60:
                ready, _, _ = select.select([master], [], [], 1)
                if ready:
                    seen += os.read(master, 4096)
            marks.append(time.perf_counter() - began)
            if wanted == b"Assistant":
                chat_mb = peak_rss_mb(process.pid) + children_peak_rss_mb(process.pid)
            os.write(master, then)
        process.wait(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    return marks[0], marks[1], chat_mb


def imports_rss_mb() -> float:
    """Peak resident memory (MB) of a new Python process that only imports what this benchmark's process and a chat
    import (the packages of the design card, with theirs): the part of `peak_rss_mb` that no data or model holds."""
    # its VmHWM: ru_maxrss would report this big process' peak, which Linux carries over to a child it forks
    code = ("import os, agent.graph, agent.writer, memory, langchain_openai, rich.console, benchmarks.latency as b; "
            "print(b.peak_rss_mb(os.getpid()))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    return round(float(run.stdout.split()[-1]), 1)


def peak_rss_mb(pid: int) -> float:
    """A process' peak resident memory (VmHWM, from /proc; 0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0) / 1024


def children_peak_rss_mb(pid: int | None = None) -> float:
    """The summed peak resident memory of a process' children (this one's by default: the Milvus Lite engine), found
    by their parent id in /proc (a child of a thread that has ended moves to another thread of the process)."""
    pid = os.getpid() if pid is None else pid
    total = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:  # gone meanwhile
            continue
        if next((line.split()[1] for line in text.splitlines() if line.startswith("PPid:")), "") == str(pid):
            total += peak_rss_mb(int(status.parent.name))
    return total


def run(sizes: list[int], n_users: int, n_queries: int, embedding_model: str = LOCAL_EMBEDDER_MODEL,
        n_entities: int = 1000) -> dict[str, Any]:
    """The whole benchmark, with the local embedder `embedding_model`; returns the report."""
    report: dict[str, Any] = {"users": n_users, "sizes": sizes, "search_ms_p95_at": {}, "search_ms_p50_at": {}}
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        config = MemoryConfig.from_env({"EMBEDDING_MODEL": embedding_model})
        config.data_dir = str(Path(tmp) / "data")
        model = InstantModel()
        memory = Memory(config, llm=model)
        report["embedding_model"] = memory.embedder.model  # the one that embeds, as loaded
        users = [f"user-{i}" for i in range(n_users)]
        rng = random.Random(1)
        queries = [_fill(rng.choice(QUERIES), rng) for _ in range(n_queries)]
        have, rates = 0, []
        for size in sorted(sizes):
            rates.append(ingest(memory, users, have, size))
            have = size
            timings = time_search(memory, users[0], queries)
            report["search_ms_p95_at"][size] = round(percentile(timings, 95), 2)
            report["search_ms_p50_at"][size] = round(percentile(timings, 50), 2)
        report["search_ms_p50"] = report["search_ms_p50_at"][have]
        report["search_ms_p95"] = report["search_ms_p95_at"][have]
        report["add_raw_per_s"] = round(float(np.mean(rates)), 1)
        adds, calls_per_add = time_adds(memory, model, users[0], 50)
        report["add_overhead_ms_p50"] = round(percentile(adds, 50), 2)
        report["add_overhead_ms_p95"] = round(percentile(adds, 95), 2)
        report["llm_calls_per_add"] = calls_per_add
        before = model.calls
        time_search(memory, users[0], queries[:20])
        report["llm_calls_per_search"] = (model.calls - before) / 20
        turns, tokens = time_turns(memory, model, users[0], queries[:50])
        report["turn_overhead_ms_p95"] = round(percentile(turns, 95), 2)
        report["memory_context_tokens"] = tokens
        engine_mb = children_peak_rss_mb()
        report["engine_peak_rss_mb"] = round(engine_mb, 1)
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + engine_mb, 1)
        report["imports_rss_mb"] = imports_rss_mb()
        report["vectors_mb"] = round(len(users) * have * memory.embedder.dims * 4 / 2**20, 1)
        # The floor comes after the memory readings: its matrix of the user's stored vectors is the benchmark's, not
        # the memory's (150 MB for 100,000 e5 vectors).
        floor = time_floor(memory, users[0], queries)
        report["floor_ms_p50"] = round(percentile(floor, 50), 3)
        report["search_over_floor"] = round(report["search_ms_p50"] / report["floor_ms_p50"], 1)
        add_floor = time_add_floor(memory, users[0], 50)
        report["add_floor_ms_p50"] = round(percentile(add_floor, 50), 2)
        report["add_floor_ms_p95"] = round(percentile(add_floor, 95), 2)
        report["add_over_floor"] = round(report["add_overhead_ms_p50"] / report["add_floor_ms_p50"], 1)
        if n_entities:
            report["graph_entities"] = grow_graph(memory, users[0], n_entities)
            report["search_ms_p95_large_graph"] = round(percentile(time_search(memory, users[0], queries), 95), 2)
            adds, _ = time_adds(memory, model, users[0], 50)
            report["add_overhead_ms_p95_large_graph"] = round(percentile(adds, 95), 2)
        # last: the engine's deletes of existing rows must not slow the phases above
        model.updates = True
        updates, _ = time_adds(memory, model, users[0], 20, expect="UPDATE")
        model.updates = False
        report["update_overhead_ms_p95"] = round(percentile(updates, 95), 2)
        memory.close()
        to_prompt, to_reply, chat_mb = cold_start(Path(config.data_dir), embedding_model)
        report["cold_start_s"] = round(to_prompt, 2)
        report["first_reply_s"] = round(to_reply, 2)
        report["reopened_peak_rss_mb"] = round(chat_mb, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", default="1000,10000", help="memories per user, comma-separated sizes")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--entities", type=int, default=1000,
                        help="entities added to the searched user's graph for the *_large_graph keys (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--embedding-model", choices=list(LOCAL_EMBEDDERS), default=LOCAL_EMBEDDER_MODEL,
                        help="the local embedder (default: %(default)s)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.memories.split(",") if s.strip()]
    report = run(sizes, args.users, args.queries, args.embedding_model, args.entities)
    if args.json:
        print(json.dumps(report))
        return 0
    table = Table(title=f"Memory latency ({args.users} users, embedded defaults, {args.embedding_model}, "
                        "instant model)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, json.dumps(value))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
