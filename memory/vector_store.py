"""The vector store: memories in one Milvus collection (Milvus Lite file by default, or a Milvus server).

Each memory row carries `user_id`, `agent_id` and `run_id` as real scalar fields, a unit-length dense vector
searched by cosine (on Milvus Lite as an inner product, see `LITE_DENSE_METRIC`), and, where the engine has it
(Milvus 2.5+ and Milvus Lite), a BM25 sparse field produced by Milvus' own BM25 function over a jieba analyzer, so
keyword search tokenises Chinese as well as English; the function reads a `keywords` field holding the text with
its English words stemmed (`memory.keywords`). On a server `user_id` is the partition key; on Milvus Lite (which
has neither partitions nor a working partition-key filter) it is a plain field, and every read carries the user's
filter.

Milvus Lite 2.5 is Milvus' C++ engine in a child process that pymilvus starts for the file and reaches through
a Unix socket: its searches run in compiled code, outside this process' GIL. It is started with SIGINT blocked,
so a Ctrl-C in the chat reaches the chat (which finishes its writes and closes the store) and not the engine.
The engine keeps its rows in a SQLite table of that file, whose Milvus id column it leaves unindexed: each delete
(and upsert) of a stored row scanned the whole table, ~2 ms per 1,000 rows (35 ms at 20,000, ~200 at 100,000).
The store gives that column an index when it opens the collection (`_tune_lite_file`): a delete then takes ~2 ms
at any size. It also puts the file in SQLite's WAL mode, which the file keeps: the engine committed each write
through a rollback journal (the journal created, written, synced and deleted, the file synced: four fdatasyncs and
~35 writes for one row; an insert of one memory 4.5 ms p50), in WAL mode by one append and one sync (3.2 ms), as
durable. It writes by delete-then-insert (a new memory's row, known to be absent, by insert alone).

On a Milvus server the store also:
- connects with a bounded timeout and turns a refused token, an unreachable URI or a missing database into a
  one-line `StoreError` naming the setting to change (MILVUS_TOKEN, MILVUS_URI, MILVUS_DB);
- detects a server without the BM25 function (Milvus < 2.5, e.g. the 2.3.5 of `pip install milvus`), logs
  that once per URI, and runs dense-only (plus the graph, which lives elsewhere);
- reads with "Session" consistency, so a row written by this process is seen by its next search or query
  (read-your-writes) without paying the wait of "Strong" (about 0.2 s) on every read. Milvus 2.3 answers a
  delete with no timestamp, which "Session" cannot wait for: the first read after a delete is "Strong";
- replaces `upsert` by delete-then-insert on servers older than 2.4, whose upsert computes the partition
  from the wrong field when the collection has a partition key (milvus-io/milvus#30607): the row would be
  stored but never found by a `user_id == ...` filter. Replaying the pair is idempotent, like an upsert.

On Milvus Lite the text fingerprints of the users served lately are kept in memory (`_Fingerprints`), so the
exact-duplicate check of an `add` asks no engine: the file is this process's alone (the data directory's lock),
so every write passes through here and keeps them right. A server's collection may have other writers: there the
engine is asked each time.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from contextlib import closing, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, TypeVar

import numpy as np
from pymilvus import DataType, Function, FunctionType, MilvusClient

from memory.embeddings import unit_length
from memory.errors import ConfigError, InputError, MemoryLayerError, StoreError, one_line
from memory.filters import any_of, combine, literal, scope_filter
from memory.keywords import ANALYZER_PARAMS, keyword_text
from memory.processes import sigint_blocked
from memory.records import MemoryRecord

log = logging.getLogger(__name__)
# pymilvus logs every failed RPC and some benign iterator notes; this module turns failures into one-line errors.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

MAX_TEXT_BYTES = 65_535
# HNSW (server) graph degree, build-time and least search-time candidate list.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 64
# Milvus Lite's exact index (FLAT) with the COSINE metric divides every filtered row's inner product by norms it
# computes anew at each search; for unit vectors the inner product is the cosine. Measured at 100,000 rows, 10
# users: a user's dense search 17-19 ms with COSINE, 7-7.5 ms with IP (one user holding all: 29 -> 21 ms). Every
# vector is stored and searched at unit length (`unit_length`), so the scores are the same cosines. Collections made
# with COSINE get their (FLAT, instant to build) index rebuilt as IP when opened. Servers keep HNSW with COSINE.
LITE_DENSE_METRIC = "IP"
SERVER_DENSE_METRIC = "COSINE"
SCALAR_FIELDS = ["id", "user_id", "agent_id", "run_id", "text", "metadata", "created_at", "updated_at",
                 "event_time", "hash"]
# The client's channel to the Milvus Lite engine sends no keepalive pings: pymilvus pings every 10 s, and after a
# minute without calls a gRPC server answers with a GOAWAY ("too_many_pings") that gRPC logs on stderr, in the
# middle of the chat.
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}
# A JSON escape in a string literal (`memory.filters.literal`), and how Milvus Lite's parser wants the characters
# it stands for; the others (quote, backslash) read alike.
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_LITE_ESCAPES = {"n": "\\\n", "t": "\t"}
# The Milvus Lite engine's own log, next to its file (milvus.db -> milvus.log).
ENGINE_LOG_SUFFIX = ".log"
# How often the start of a Milvus Lite engine process is checked (seconds).
ENGINE_POLL_S = 0.002
# Seconds a starting Milvus Lite engine may take to listen while its process runs. milvus_lite gives it 0.5 s and
# then takes it as started; on a busy 2-core machine (two test workers) it once took longer, and the client then
# failed at once on the missing socket (the wait now lasts until the socket accepts a connection).
ENGINE_START_TIMEOUT_S = 30.0
# Seconds to wait for the Milvus Lite engine's hold on its file while rewriting it after an erasure.
LITE_VACUUM_TIMEOUT = 10.0
# The Milvus Lite engine's allocator (its own jemalloc) settings, unless MALLOC_CONF says otherwise: by default it
# keeps freed memory while the engine is idle, such as the ~200 MB buffer its load of a file's rows leaves (the
# engine of a chat opened on 100,000 rows sat at 483-499 MB; with a background thread returning it after a second,
# ~386 MB). The load's peak stays.
LITE_MALLOC_CONF = "background_thread:true,dirty_decay_ms:1000"
# The column of Milvus Lite 2.5's row table holding the primary key, and how long to wait for the engine's hold on
# its file to index it and set its journal mode (see `_tune_lite_file`).
LITE_ID_COLUMN = "milvus_id"
LITE_INDEX_TIMEOUT = 5.0
# Seconds to wait for a Milvus server's channel before saying it cannot be reached.
CONNECT_TIMEOUT = 5.0
# Server reads see this process's own writes (pymilvus keeps the last write timestamp per collection).
SERVER_CONSISTENCY = "Session"
# Milvus' BM25 function (full-text search) appeared in 2.5; upsert with a partition key is right from 2.4.
BM25_SINCE = (2, 5)
PARTITION_KEY_UPSERT_SINCE = (2, 4)
# The most rows one plain query returns (Milvus' offset + limit bound).
QUERY_WINDOW = 16_384
# Users whose text fingerprints are kept in memory on Milvus Lite, the least recently served dropped first (~2.4 MB
# per 10,000 memories). A query for them beside the add's embedding took 14.5 ms p50 at 100,000 rows (3-4 alone).
FINGERPRINT_USERS = 16
FINGERPRINT_FIELDS = ["id", "hash", "agent_id", "run_id"]
# The Milvus Lite engine processes this process started, by the resolved path of their file (the latest one).
_ENGINES: dict[str, _EngineProcess] = {}
# Each (URI, database, reason) the degraded-mode warning was logged for: it is said once per process.
_WARNED: set[tuple[str, str, str]] = set()


T = TypeVar("T")


class VectorStore(Protocol):
    """What the memory pipeline needs from a vector store."""

    keyword_search: bool

    def upsert(self, records: list[MemoryRecord], vectors: np.ndarray, *,
               new_ids: Collection[str] = ()) -> None: ...
    def get(self, ids: list[str]) -> list[MemoryRecord]: ...
    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]: ...
    def known_hashes(self, user_id: str, hashes: list[str], agent_id: str = "",
                     run_id: str = "") -> dict[str, str]: ...
    def fingerprints_kept(self, user_id: str) -> bool: ...
    def keep_fingerprints(self, user_id: str) -> None: ...
    def delete(self, ids: list[str], user_id: str) -> None: ...
    def delete_user(self, user_id: str) -> int: ...
    def list(self, expr: str, user_id: str, limit: int) -> list[MemoryRecord]: ...
    def search_dense(self, vector: np.ndarray, expr: str, user_id: str,
                     limit: int) -> list[tuple[MemoryRecord, float]]: ...
    def search_keyword(self, text: str, expr: str, user_id: str, limit: int) -> list[tuple[MemoryRecord, float]]: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class _Fingerprints:
    """One user's stored text fingerprints: each memory's hash and scope, found by hash. Held in a few flat
    dictionaries of strings, not an object per memory: the cyclic GC would scan those at every full collection."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self._hash_of: dict[str, str] = {}  # memory id -> hash
        self._holders: dict[str, str | tuple[str, ...]] = {}  # hash -> the id (or ids) of the memories with it
        self._scope_of: dict[str, tuple[str, str]] = {}  # memory id -> (agent_id, run_id), where one is set
        for row in rows:
            self.put(row)

    def put(self, row: dict[str, Any]) -> None:
        """Note a row written (a replaced row's old hash goes)."""
        memory_id, digest = row["id"], row["hash"]
        self.drop(memory_id)
        held = self._holders.get(digest)
        self._holders[digest] = memory_id if held is None else (*_ids(held), memory_id)
        self._hash_of[memory_id] = digest
        if row["agent_id"] or row["run_id"]:
            self._scope_of[memory_id] = (row["agent_id"], row["run_id"])

    def drop(self, memory_id: str) -> None:
        """Forget a deleted row."""
        digest = self._hash_of.pop(memory_id, None)
        if digest is None:
            return
        self._scope_of.pop(memory_id, None)
        rest = tuple(i for i in _ids(self._holders[digest]) if i != memory_id)
        if rest:
            self._holders[digest] = rest[0] if len(rest) == 1 else rest
        else:
            del self._holders[digest]

    def known(self, hashes: list[str], agent_id: str, run_id: str) -> dict[str, str]:
        """Which of `hashes` a memory within the scope has, each with the id of one such memory."""
        found = {}
        for digest in hashes:
            for memory_id in _ids(self._holders.get(digest, ())):
                agent, run = self._scope_of.get(memory_id, ("", ""))
                if (not agent_id or agent == agent_id) and (not run_id or run == run_id):
                    found[digest] = memory_id
                    break
        return found


def _ids(held: str | tuple[str, ...]) -> tuple[str, ...]:
    return (held,) if isinstance(held, str) else held


class MilvusVectorStore:
    """Memories in a Milvus collection; see the module docstring for the layout."""

    def __init__(self, uri: str, *, dims: int, collection: str = "memories", token: str | None = None,
                 db_name: str = "default", is_server: bool = False) -> None:
        self.dims = dims
        self.collection = collection
        self.is_server = is_server
        self.uri = uri
        self.db_name = db_name or "default"
        self._lock = threading.RLock()
        self.server_version: tuple[int, int, int] | None = None
        if is_server:
            self.client = _connect_server(uri, token, self.db_name)
            try:
                self.server_version = _parse_version(self.client.get_server_version())
            except Exception as exc:
                self.client.close()
                raise StoreError(f"Milvus at {uri} does not tell its version: {one_line(exc)}") from exc
        else:
            self.client = _open_lite(uri)
        # delete-then-insert on Milvus Lite (its upsert is slow, see above) and on servers before 2.4
        self._native_upsert = is_server and not (self.server_version is not None
                                                 and self.server_version < PARTITION_KEY_UPSERT_SINCE)
        self._deleted_since_read = False
        self._fingerprints: OrderedDict[str, _Fingerprints] = OrderedDict()
        self.keyword_search = True
        self._stemmed = False
        self._metric = SERVER_DENSE_METRIC if is_server else LITE_DENSE_METRIC
        try:
            self._open_collection()
        except (ConfigError, StoreError):
            self._close_client()
            raise
        except Exception as exc:
            self._close_client()
            raise StoreError(f"cannot open the Milvus collection {collection!r} at {uri}: {one_line(exc)}") from exc

    # -- schema -------------------------------------------------------------------------------------------
    def _open_collection(self) -> None:
        if self.client.has_collection(self.collection):
            info = self.client.describe_collection(self.collection)
            fields = {f["name"]: f for f in info["fields"]}
            dim = int(fields["dense"]["params"]["dim"])
            if dim != self.dims:
                raise ConfigError(f"Milvus collection {self.collection!r} holds {dim}-dimensional vectors but the "
                                  f"embedder gives {self.dims}; use another collection_name or the matching embedder")
            self.keyword_search = "sparse" in fields
            # collections made before the stemmed field have the BM25 function read `text`
            self._stemmed = "keywords" in fields
            if not self.keyword_search:
                self._say_no_bm25(self._no_bm25_reason()
                                  or f"the collection {self.collection!r} was created without a BM25 field")
            if not self.is_server:
                self._index_dense_by(self._metric)
        else:
            self._stemmed = True
            if reason := self._no_bm25_reason():
                self.keyword_search = False
                self._say_no_bm25(reason)
                self._create(with_bm25=False)
            else:
                try:
                    self._create(with_bm25=True)
                except Exception as exc:
                    self.keyword_search = False
                    self._say_no_bm25(f"creating a BM25 field failed ({one_line(exc)})")
                    self._create(with_bm25=False)
        self.client.load_collection(self.collection)
        if not self.is_server:
            _tune_lite_file(self.uri, self.collection)
        # Milvus 2.5 fails a BM25 search of a collection that never held a row (its average length is NaN)
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], **self._read_options())
        self._ever_written = bool(rows and rows[0].get("count(*)"))

    def _index_dense_by(self, metric: str) -> None:
        """Make the dense field's exact (FLAT) index use `metric`, rebuilding it if it uses another or is missing
        (an earlier rebuild cut short). Milvus Lite only: a FLAT index holds no data of its own."""
        try:
            current = self.client.describe_index(self.collection, "dense") or {}
        except Exception:  # no index on the field
            current = {}
        if current.get("metric_type") == metric:
            return
        log.info("rebuilding the dense index of %r with the %s metric", self.collection, metric)
        self.client.release_collection(self.collection)
        if current:
            self.client.drop_index(self.collection, "dense")
        index = self.client.prepare_index_params()
        index.add_index("dense", index_type="FLAT", metric_type=metric)
        self.client.create_index(self.collection, index, sync=False)

    def _no_bm25_reason(self) -> str:
        """Why this server cannot have a BM25 field, or "" when it may (Milvus Lite, 2.5+, unknown version)."""
        if self.server_version is not None and self.server_version < BM25_SINCE:
            return (f"Milvus {_version_text(self.server_version)} has no BM25 function "
                    f"(it needs Milvus {_version_text(BM25_SINCE)}+)")
        return ""

    def _say_no_bm25(self, reason: str) -> None:
        """Log, once per URI and database, that keyword search is off and why."""
        key = (self.uri, self.db_name, reason)
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning("keyword (BM25) search is off for Milvus at %s: %s; memories are found by dense vectors "
                        "and the graph only", self.uri, reason)

    def _create(self, with_bm25: bool) -> None:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("user_id", DataType.VARCHAR, max_length=1024, is_partition_key=self.is_server)
        schema.add_field("agent_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("run_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dims)
        schema.add_field("metadata", DataType.JSON)
        for name in ("created_at", "updated_at", "event_time"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("hash", DataType.VARCHAR, max_length=64)
        index = self.client.prepare_index_params()
        if self.is_server:
            index.add_index("dense", index_type="HNSW", metric_type=self._metric,
                            params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION})
        else:
            index.add_index("dense", index_type="FLAT", metric_type=self._metric)
        if with_bm25:
            schema.add_field("keywords", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True,
                             analyzer_params=ANALYZER_PARAMS)
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="keywords_bm25", function_type=FunctionType.BM25,
                                         input_field_names=["keywords"], output_field_names=["sparse"]))
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        try:
            self.client.create_collection(self.collection, schema=schema,
                                          **({"consistency_level": SERVER_CONSISTENCY} if self.is_server else {}))
            # pymilvus polls an index's state every 0.5 s until it is built: a second of sleep for the two
            # indexes of this new, empty collection, on the first start of the chat. Milvus Lite builds them
            # at once, so there is nothing to wait for.
            self.client.create_index(self.collection, index, sync=self.is_server)
            self.client.load_collection(self.collection)
        except Exception:
            if self.client.has_collection(self.collection):
                self.client.drop_collection(self.collection)
            raise

    # -- writes -------------------------------------------------------------------------------------------
    def upsert(self, records: list[MemoryRecord], vectors: np.ndarray, *, new_ids: Collection[str] = ()) -> None:
        """Insert or replace rows (idempotent: replaying the same records changes nothing). `new_ids`: rows the
        caller knows are not stored yet, inserted without the delete that replacing a row takes here."""
        if not records:
            return
        rows = [{**_row(r), "dense": v.tolist()} for r, v in zip(records, unit_length(vectors), strict=True)]
        if self.keyword_search and self._stemmed:
            for row in rows:
                row["keywords"] = _clip(keyword_text(row["text"]))
        def write() -> None:
            if self._native_upsert:
                self.client.upsert(self.collection, rows)
            else:  # on a server, the insert's timestamp, later than the delete's, is what "Session" reads wait for
                stored = [row["id"] for row in rows if row["id"] not in new_ids]
                if stored:
                    self.client.delete(self.collection, ids=stored)
                self.client.insert(self.collection, rows)

        with self._lock:
            self._ever_written = True
            try:
                self._engine_call("write memories", write, retry=False)
            except Exception:
                for row in rows:  # written or not: asked anew
                    self._fingerprints.pop(row["user_id"], None)
                raise
            for row in rows:
                if (kept := self._fingerprints.get(row["user_id"])) is not None:
                    kept.put(row)

    def delete(self, ids: list[str], user_id: str) -> None:
        """Delete rows by id."""
        if ids:
            expr = self._expr(combine(scope_filter(user_id), _id_in(ids)))
            with self._lock:
                try:
                    self._engine_call("delete memories", lambda: self.client.delete(self.collection, filter=expr))
                except Exception:
                    self._fingerprints.pop(user_id, None)  # deleted or not: asked anew
                    raise
                self._deleted_since_read = self.is_server
                if (kept := self._fingerprints.get(user_id)) is not None:
                    for memory_id in ids:
                        kept.drop(memory_id)

    def delete_user(self, user_id: str) -> int:
        """Delete every row of one user and return how many there were, and on Milvus Lite their bytes from the
        file too (a server drops deleted rows' bytes at its own compaction). Idempotent."""
        with self._lock:
            self._fingerprints.pop(user_id, None)
            ids = [r["id"] for r in self._query(scope_filter(user_id), ["id"], limit=None)]
            for start in range(0, len(ids), 1000):
                batch = ids[start:start + 1000]
                self._engine_call("delete memories", lambda ids=batch: self.client.delete(self.collection, ids=ids))
            self._deleted_since_read = bool(ids)
            if not self.is_server:
                _vacuum_lite(self.uri)
            return len(ids)

    def _read_options(self) -> dict[str, Any]:
        """The consistency of the next read on a server (call with the lock held); nothing on Milvus Lite."""
        if not self.is_server:
            return {}
        if self._deleted_since_read:
            self._deleted_since_read = False
            return {"consistency_level": "Strong"}
        return {"consistency_level": SERVER_CONSISTENCY}

    # -- reads --------------------------------------------------------------------------------------------
    def known_hashes(self, user_id: str, hashes: list[str], agent_id: str = "",
                     run_id: str = "") -> dict[str, str]:
        """Which of these text fingerprints the user's memories (of that agent and run, where given) already have,
        each with the id of a memory that has it."""
        if not hashes:
            return {}
        with self._lock:
            if self.is_server:
                wanted = combine(scope_filter(user_id, agent_id, run_id), any_of("hash", hashes))
                return {row["hash"]: row["id"] for row in self._query(wanted, ["hash", "id"], limit=None)}
            return self._kept(user_id).known(hashes, agent_id, run_id)

    def fingerprints_kept(self, user_id: str) -> bool:
        """Whether `known_hashes` for this user answers from memory, without asking the engine."""
        with self._lock:
            return user_id in self._fingerprints

    def keep_fingerprints(self, user_id: str) -> None:
        """Read the user's text fingerprints into memory now, where this store keeps them (Milvus Lite), so that the
        user's next add does not wait for them."""
        with self._lock:
            if not self.is_server:
                self._kept(user_id)

    def _kept(self, user_id: str) -> _Fingerprints:
        """The user's kept fingerprints, read from the engine if they are not held; call with the lock held."""
        kept = self._fingerprints.get(user_id)
        if kept is None:
            kept = _Fingerprints(self._query(scope_filter(user_id), FINGERPRINT_FIELDS, limit=None))
            self._fingerprints[user_id] = kept
            while len(self._fingerprints) > FINGERPRINT_USERS:
                self._fingerprints.popitem(last=False)
        self._fingerprints.move_to_end(user_id)
        return kept

    def get(self, ids: list[str]) -> list[MemoryRecord]:
        """Rows by id (missing ids are skipped)."""
        if not ids:
            return []
        with self._lock:
            rows = self._engine_call("read memories by id", lambda: self.client.get(
                self.collection, ids=list(ids), output_fields=SCALAR_FIELDS, **self._read_options()))
        return [_record(r) for r in rows]

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """The stored (unit-length) vectors of these rows, by id (missing ids are skipped)."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), 1000):
            batch = list(ids[start:start + 1000])
            with self._lock:
                rows = self._engine_call("read memory vectors", lambda batch=batch: self.client.get(
                    self.collection, ids=batch, output_fields=["id", "dense"], **self._read_options()))
            out.update((row["id"], np.asarray(row["dense"], dtype=np.float32)) for row in rows)
        return out

    def list(self, expr: str, user_id: str, limit: int | None) -> list[MemoryRecord]:
        """Rows matching an expression within one user's scope, newest first."""
        with self._lock:
            rows = self._query(expr, SCALAR_FIELDS, limit=None)
        records = sorted((_record(r) for r in rows), key=lambda r: (r.updated_at, r.id), reverse=True)
        return records[:limit] if limit else records

    def _query(self, expr: str, fields: list[str], limit: int | None) -> list[dict]:
        """Every row matching `expr` (up to `limit`), with these fields. Call with the lock held."""
        # One plain query answers most calls: a query iterator costs ~1 s on a server (its set-up and each
        # batch wait for a fresh timestamp). Only a result that fills the query window needs the iterator.
        window = min(limit, QUERY_WINDOW) if limit else QUERY_WINDOW
        expr = self._expr(expr)

        def query() -> list[dict]:
            rows = self.client.query(self.collection, filter=expr, output_fields=fields, limit=window,
                                     **self._read_options())
            if len(rows) < window or (limit and limit <= QUERY_WINDOW):
                return list(rows)
            out: list[dict] = []
            iterator = self.client.query_iterator(self.collection, batch_size=1000, filter=expr,
                                                  output_fields=fields, limit=limit if limit else -1)
            try:
                while batch := iterator.next():
                    out.extend(batch)
            finally:
                iterator.close()
            return out

        return self._engine_call("query memories", query)

    def search_dense(self, vector: np.ndarray, expr: str, user_id: str, limit: int) -> list[tuple[MemoryRecord, float]]:
        """Nearest rows by cosine similarity (higher is closer)."""
        params: dict[str, Any] = {"metric_type": self._metric}
        if self.is_server:  # HNSW: the candidate list must hold at least `limit` rows
            params["params"] = {"ef": max(limit, HNSW_EF_SEARCH)}
        return self._search([unit_length(vector).tolist()], "dense", params, expr, limit, sign=1.0)

    def search_keyword(self, text: str, expr: str, user_id: str, limit: int) -> list[tuple[MemoryRecord, float]]:
        """Rows ranked by BM25 over the jieba-analysed text (positive scores; empty without BM25 support)."""
        if not self.keyword_search or not self._ever_written or not text.strip():
            return []
        if self._stemmed:
            text = keyword_text(text)
        # Milvus Lite 3 reported BM25 as a negative distance, Milvus 2.5 as a positive score: use the magnitude.
        return self._search([text], "sparse", {"metric_type": "BM25"}, expr, limit, sign=None)

    def _search(self, data: list, field: str, params: dict, expr: str, limit: int,
                sign: float | None) -> list[tuple[MemoryRecord, float]]:
        expr = self._expr(expr)
        with self._lock:
            options = self._read_options()
        # The search itself runs unlocked, but the lock above waits for a write in flight, and the Milvus Lite engine
        # itself runs a search only after a delete it is doing: beside the delete of an existing row at 100,000
        # rows (~400 ms) a search of another user took 394 ms through a bare client, and 602 ms through this
        # store when tried without taking the lock.
        hits = self._engine_call("search memories", lambda: self.client.search(
            self.collection, data=data, anns_field=field, limit=limit, filter=expr, search_params=params,
            output_fields=SCALAR_FIELDS, **options))
        out = []
        for hit in hits[0] if hits else []:
            score = float(hit["distance"])
            out.append((_record(hit["entity"] | {"id": hit["id"]}), abs(score) if sign is None else score))
        return out

    def _expr(self, expr: str) -> str:
        """`expr` as this engine reads it: Milvus Lite's parser takes `\\` + a character as that character, so a
        line break is written as a backslash and the break itself, and a tab as itself; it cannot match a
        carriage return at all."""
        if self.is_server or "\\" not in expr:
            return expr
        return _ESCAPE.sub(_lite_escape, expr)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop and recreate the collection."""
        with self._lock:
            self._fingerprints.clear()
            self.client.drop_collection(self.collection)
            self._open_collection()

    def close(self) -> None:
        """Close the client; on Milvus Lite also stop this process' embedded server for the file."""
        with self._lock:
            self._close_client()

    def _engine_call(self, doing: str, call: Callable[[], T], *, retry: bool = True) -> T:
        """`call()` against the engine; its failure (a server gone, the Lite engine's process killed) is a one-line
        `StoreError`. On Milvus Lite an engine process that has died (killed, out of memory) is started again
        first, from its file, and the call is tried once more unless `retry` is False (an insert that may have
        reached the engine before it died must not be made twice: the caller's journal replays it)."""
        for attempt in (1, 2):
            client = self.client
            try:
                return call()
            except MemoryLayerError:
                raise
            except Exception as exc:
                if not self._revived(client) or not retry or attempt == 2:
                    raise StoreError(f"Milvus could not {doing}: {one_line(exc)}") from exc
        raise AssertionError("unreachable")

    def _revived(self, failed: MilvusClient) -> bool:
        """After a call through `failed` failed: whether a working client is in place now, because this process'
        Milvus Lite engine had exited and was started again (here, or by another thread meanwhile)."""
        if self.is_server:
            return False
        with self._lock:
            if self.client is not failed:
                return True
            if not _engine_exited(self.uri):
                return False
            log.warning("the Milvus Lite engine for %s had stopped; starting it again", self.uri)
            with suppress(Exception):  # the old channel's engine is gone already
                self._close_client()
            self.client = _open_lite(self.uri)
            self.client.load_collection(self.collection)
            self._fingerprints.clear()  # read anew from what the engine kept
            return True

    def _close_client(self) -> None:
        try:
            self.client.close()
        finally:
            if not self.is_server:
                _release_lite_server(self.uri)


def _engine_exited(uri: str) -> bool:
    """Whether the Milvus Lite engine process this process started for the file `uri` has exited."""
    engine = _ENGINES.get(str(Path(uri).resolve()))
    return engine is not None and engine.poll() is not None


def _open_lite(uri: str) -> MilvusClient:
    """A client of Milvus Lite for the file `uri`, its engine process started with SIGINT blocked (see
    `memory.processes`); the engine stops when this process releases the file's lock (at `close()` or exit)."""
    if os.path.isdir(uri):
        raise StoreError(f"{uri} is a directory written by Milvus Lite 3, which this version (Milvus Lite 2.5, a "
                         f"file) cannot read: move it away or set MEMORY_DATA_DIR to a new directory")
    _start_engines_quickly()
    try:
        with sigint_blocked():
            return MilvusClient(uri=uri, grpc_options=LITE_GRPC_OPTIONS)
    except Exception as exc:
        said = _engine_complaint(uri)
        raise StoreError(f"cannot open Milvus Lite at {uri}: {said or one_line(exc)}") from exc


class _EngineProcess(subprocess.Popen):
    """The Milvus Lite engine's process, whose start-up check ends as soon as the engine listens.

    `milvus_lite.server.Server.start` waits 0.5 s for the new process to fail, and takes it as started when it
    has not: half a second on every open, although the engine's socket appears after about 20 ms, and too short
    a wait on a busy machine. Here that wait ends when the engine's socket accepts a connection (it is up), when
    the process ends (it failed, as before), or after `ENGINE_START_TIMEOUT_S`. (The socket's file appears when
    it is bound, a moment before it listens: a client that came in between was refused once, on a busy
    machine.)"""

    _started = False

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        _ENGINES[str(Path(args[1]).resolve())] = self
        kwargs["env"] = {"MALLOC_CONF": LITE_MALLOC_CONF, **(kwargs.get("env") or os.environ)}
        # The engine logs to stdout/stderr, which are the chat's terminal: its log goes next to its file instead,
        # one run's worth (errors only).
        with open(Path(args[1]).with_suffix(ENGINE_LOG_SUFFIX), "wb") as log:
            super().__init__(args, **kwargs, stdout=log, stderr=log)

    def wait(self, timeout: float | None = None) -> int:
        path = next((a[len("unix:"):] for a in self.args if isinstance(a, str) and a.startswith("unix:")), "")
        if self._started or timeout is None or not path:  # a later wait: for the process to end, at close
            return super().wait(timeout)
        self._started = True
        deadline = time.monotonic() + max(timeout, ENGINE_START_TIMEOUT_S)
        while time.monotonic() < deadline:
            if self.poll() is not None:
                return self.returncode
            if _listening(path):
                raise subprocess.TimeoutExpired(self.args, timeout)  # what Server.start reads as "started"
            time.sleep(ENGINE_POLL_S)
        return super().wait(0)


def _listening(path: str) -> bool:
    """Whether a Unix socket at `path` accepts a connection now (False while there is none)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _engine_complaint(uri: str) -> str:
    """The last error the Milvus Lite engine for `uri` logged ("Create table failed, errs: file is not a
    database"), or ""."""
    try:
        lines = Path(uri).with_suffix(ENGINE_LOG_SUFFIX).read_text(errors="replace").splitlines()[-20:]
    except OSError:
        return ""
    errors = [line.split("]")[-1].strip() for line in lines if line.startswith("E")]
    return next((e for e in reversed(errors) if "failed" in e.lower() and not e.startswith("Init milvus")),
                errors[-1] if errors else "")


def _start_engines_quickly() -> None:
    """Have milvus_lite start its engine processes as `_EngineProcess`, and log to its own quiet logger rather
    than the root one (a failed start is a `StoreError` naming the engine's complaint). Once per process."""
    try:
        import milvus_lite.server as server
    except ImportError:  # pymilvus will say Milvus Lite is missing
        return
    if getattr(server.subprocess, "Popen", None) is not _EngineProcess:
        server.subprocess = SimpleNamespace(Popen=_EngineProcess, TimeoutExpired=subprocess.TimeoutExpired)
        server.logger = logging.getLogger("milvus_lite")
        server.logger.setLevel(logging.CRITICAL)


def _lite_escape(escape: re.Match[str]) -> str:
    if escape[1] == "r":
        raise InputError("Milvus Lite cannot match a carriage return in a filter value")
    return _LITE_ESCAPES.get(escape[1], escape[0])


def _vacuum_lite(path: str) -> None:
    """Rewrite a Milvus Lite file without the free pages its deleted rows leave behind.

    Milvus Lite 2.5 keeps its rows in SQLite, which deletes a row by freeing its page: the bytes stay in the
    file until a VACUUM. The engine's own connection stays open; SQLite's locking makes the rewrite safe, and
    the caller holds the store's lock so no write of ours is in flight. The write-ahead log (see `_tune_lite_file`),
    which still holds older copies of the pages, is then checkpointed into the file and emptied."""
    try:
        with closing(sqlite3.connect(path, timeout=LITE_VACUUM_TIMEOUT)) as db:
            db.execute("VACUUM")
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise sqlite3.OperationalError("the engine kept its write-ahead log busy")
    except sqlite3.Error as exc:
        raise StoreError(f"the Milvus Lite file {path} could not be rewritten without the deleted rows: "
                         f"{one_line(exc)}") from exc


def _tune_lite_file(path: str, collection: str) -> None:
    """Put the SQLite file where Milvus Lite 2.5 keeps `collection`'s rows in WAL mode, and index its Milvus id
    column, once (both stay in the file).

    The engine finds the rows a delete names with `SELECT ... WHERE milvus_id IN (...)` and deletes them the same
    way, two scans of the whole table (vectors included) without an index. In its default rollback-journal mode each
    write it commits syncs the file four times; in WAL mode once (the engine's connection keeps SQLite's default
    `synchronous=FULL`, so a commit is on disk when it returns). Doing both while the engine's connection is open is
    safe as `_vacuum_lite` is: SQLite's locking orders them with the engine's writes, the engine's statements are
    prepared again for the new schema, and its connection follows the file into WAL mode at its next transaction.
    An engine whose table has another layout is left unindexed; a failure only costs speed, so it is logged, not
    raised."""
    try:
        with closing(sqlite3.connect(path, timeout=LITE_INDEX_TIMEOUT)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                columns = {row[1] for row in db.execute(f'PRAGMA table_info("{collection}")')}
                if LITE_ID_COLUMN in columns:
                    db.execute(f'CREATE INDEX IF NOT EXISTS "{collection}_{LITE_ID_COLUMN}" '
                               f'ON "{collection}" ({LITE_ID_COLUMN})')
    except sqlite3.Error as exc:
        log.warning("could not tune the Milvus Lite file %s (writes and deletes stay slower): %s", path,
                    one_line(exc))


def _release_lite_server(path: str) -> None:
    """Stop this process' embedded Milvus Lite server for `path`, releasing its file lock.

    Closing the pymilvus client leaves the in-process server running (and its lock held) until the process
    exits, so no other process could open the data directory after `close()`."""
    try:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)
    except Exception as exc:  # the data is safe either way; only the lock outlives the close
        log.warning("could not stop the embedded Milvus Lite server for %s: %s", path, one_line(exc))


def _connect_server(uri: str, token: str | None, db_name: str) -> MilvusClient:
    """A client of a Milvus server, or a one-line `StoreError` naming the setting that is wrong."""
    try:
        client = MilvusClient(uri=uri, token=token or "", db_name=db_name, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        code, details = _grpc_status(exc)
        if code in {"UNAUTHENTICATED", "PERMISSION_DENIED"}:
            said = "no token was given" if not token else "the token was refused"
            raise StoreError(f"Milvus at {uri} refused the connection: {said} ({details}); set MILVUS_TOKEN "
                             f"(vector_store.config.token) to 'user:password' or an API key") from None
        timed_out = code == "DEADLINE_EXCEEDED"
        reason = f"no answer within {CONNECT_TIMEOUT:g} s" if timed_out else details or one_line(exc)
        raise StoreError(f"cannot reach Milvus at MILVUS_URI={uri} (vector_store.config.url): {reason}") from None
    try:
        databases = client.list_databases()
    except Exception as exc:  # e.g. a user without the privilege: let the first real operation tell
        log.debug("cannot list Milvus databases: %s", one_line(exc))
        return client
    if db_name not in databases:
        client.close()
        raise StoreError(f"Milvus at {uri} has no database {db_name!r}: create it or set MILVUS_DB "
                         f"(vector_store.config.db_name) to one of: {', '.join(sorted(databases))}")
    return client


def _grpc_status(exc: BaseException) -> tuple[str, str]:
    """The gRPC status name and details behind a pymilvus error (its cause chain may loop), or ("", "")."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "code", None)
        details = getattr(current, "details", None)
        if callable(code) and callable(details):
            try:
                name = getattr(code(), "name", "")
                text = " ".join(str(details() or "").split())
            except Exception:  # not a grpc error after all
                name, text = "", ""
            if name:
                return name, text[:200]
        current = current.__cause__ or current.__context__
    return "", ""


def _parse_version(text: str) -> tuple[int, int, int] | None:
    """(2, 3, 5) from "v2.3.5-lite"; None when the server's version string has no such numbers."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def _clip(text: str) -> str:
    """Text cut to the field's byte limit (stems are never longer than their words, but be sure)."""
    data = text.encode()
    return text if len(data) <= MAX_TEXT_BYTES else data[:MAX_TEXT_BYTES].decode(errors="ignore")


def _id_in(ids: list[str]) -> str:
    return f"id in [{', '.join(literal(i) for i in ids)}]"


def _row(record: MemoryRecord) -> dict[str, Any]:
    return {"id": record.id, "user_id": record.user_id, "agent_id": record.agent_id, "run_id": record.run_id,
            "text": record.text, "metadata": record.metadata, "created_at": record.created_at,
            "updated_at": record.updated_at, "event_time": record.event_time, "hash": record.hash}


def _record(row: dict[str, Any]) -> MemoryRecord:
    metadata = row.get("metadata") or {}
    return MemoryRecord(id=row["id"], user_id=row["user_id"], text=row["text"], agent_id=row.get("agent_id") or "",
                        run_id=row.get("run_id") or "", metadata=dict(metadata),
                        created_at=int(row.get("created_at") or 0), updated_at=int(row.get("updated_at") or 0),
                        event_time=int(row.get("event_time") or 0), hash=row.get("hash") or "")


__all__ = ["MilvusVectorStore", "VectorStore", "combine", "scope_filter"]
