"""The vector store: memories in one Milvus collection (Milvus Lite file by default, or a Milvus server).

Each memory row carries `user_id`, `agent_id` and `run_id` as real scalar fields, a dense vector searched by
COSINE, and, where the engine has it (Milvus 2.5+ and Milvus Lite), a BM25 sparse field produced by Milvus'
own BM25 function over a jieba analyzer, so keyword search tokenises Chinese as well as English. On Milvus
Lite every user's rows live in their own partition (searches scan only that user's rows); on a server
`user_id` is the partition key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any, Protocol

import jieba
import numpy as np
from pymilvus import DataType, Function, FunctionType, MilvusClient

from memory.errors import ConfigError, StoreError, one_line
from memory.filters import combine, literal, scope_filter
from memory.keywords import ANALYZER_PARAMS
from memory.records import MemoryRecord

log = logging.getLogger(__name__)
# pymilvus logs every failed RPC and some benign iterator notes; this module turns failures into one-line errors.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
# Milvus Lite's jieba analyzer announces its dictionary load on stderr.
jieba.setLogLevel(logging.WARNING)

MAX_TEXT_BYTES = 65_535
SCALAR_FIELDS = ["id", "user_id", "agent_id", "run_id", "text", "metadata", "created_at", "updated_at",
                 "event_time", "hash"]
# Searching many unflushed rows on Milvus Lite is slow (a brute-force scan of a growing segment): flush once
# this many rows have been written since the last flush.
FLUSH_EVERY = 64


class VectorStore(Protocol):
    """What the memory pipeline needs from a vector store."""

    keyword_search: bool

    def upsert(self, records: list[MemoryRecord], vectors: np.ndarray) -> None: ...
    def get(self, ids: list[str]) -> list[MemoryRecord]: ...
    def known_hashes(self, user_id: str, expr: str, hashes: list[str]) -> set[str]: ...
    def delete(self, ids: list[str], user_id: str) -> None: ...
    def delete_user(self, user_id: str) -> int: ...
    def list(self, expr: str, user_id: str, limit: int) -> list[MemoryRecord]: ...
    def search_dense(self, vector: np.ndarray, expr: str, user_id: str,
                     limit: int) -> list[tuple[MemoryRecord, float]]: ...
    def search_keyword(self, text: str, expr: str, user_id: str, limit: int) -> list[tuple[MemoryRecord, float]]: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class MilvusVectorStore:
    """Memories in a Milvus collection; see the module docstring for the layout."""

    def __init__(self, uri: str, *, dims: int, collection: str = "memories", token: str | None = None,
                 db_name: str = "default", is_server: bool = False) -> None:
        self.dims = dims
        self.collection = collection
        self.is_server = is_server
        self._lock = threading.RLock()
        self._unflushed = 0
        try:
            kwargs: dict[str, Any] = {"uri": uri}
            if is_server:
                kwargs.update(token=token or "", db_name=db_name or "default", timeout=10)
            self.client = MilvusClient(**kwargs)
        except Exception as exc:
            where = f"MILVUS_URI={uri} (token from MILVUS_TOKEN, database {db_name!r})" if is_server else uri
            raise StoreError(f"cannot open Milvus at {where}: {one_line(exc)}") from exc
        self.keyword_search = True
        self._partitions: set[str] = set()
        self._open_collection()

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
            self._partitioned = not any(f.get("is_partition_key") for f in info["fields"]) and not self.is_server
        else:
            self._partitioned = not self.is_server
            try:
                self._create(with_bm25=True)
            except Exception as exc:
                log.warning("Milvus at this URI has no BM25 function (%s); keyword search is off, dense only",
                            one_line(exc))
                self.keyword_search = False
                self._create(with_bm25=False)
        self.client.load_collection(self.collection)
        if self._partitioned:
            self._partitions = set(self.client.list_partitions(self.collection))

    def _create(self, with_bm25: bool) -> None:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("user_id", DataType.VARCHAR, max_length=1024, is_partition_key=not self._partitioned)
        schema.add_field("agent_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("run_id", DataType.VARCHAR, max_length=1024)
        text_params: dict[str, Any] = {"max_length": MAX_TEXT_BYTES}
        if with_bm25:
            text_params.update(enable_analyzer=True, analyzer_params=ANALYZER_PARAMS)
        schema.add_field("text", DataType.VARCHAR, **text_params)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dims)
        schema.add_field("metadata", DataType.JSON)
        for name in ("created_at", "updated_at", "event_time"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("hash", DataType.VARCHAR, max_length=64)
        index = self.client.prepare_index_params()
        index.add_index("dense", index_type="FLAT" if not self.is_server else "HNSW", metric_type="COSINE",
                        **({} if not self.is_server else {"params": {"M": 16, "efConstruction": 200}}))
        if with_bm25:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                         input_field_names=["text"], output_field_names=["sparse"]))
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        try:
            self.client.create_collection(self.collection, schema=schema, index_params=index)
        except Exception:
            if self.client.has_collection(self.collection):
                self.client.drop_collection(self.collection)
            raise

    def _partition(self, user_id: str, create: bool = False) -> list[str] | None:
        """The partition holding this user's rows (Lite), or None to search the whole collection (server)."""
        if not self._partitioned:
            return None
        name = "u_" + hashlib.sha256(user_id.encode()).hexdigest()[:40]
        if name not in self._partitions:
            if not create:
                return []
            self.client.create_partition(self.collection, name)
            self._partitions.add(name)
        return [name]

    # -- writes -------------------------------------------------------------------------------------------
    def upsert(self, records: list[MemoryRecord], vectors: np.ndarray) -> None:
        """Insert or replace rows (idempotent: replaying the same records changes nothing)."""
        if not records:
            return
        rows = [{**_row(r), "dense": v.tolist()} for r, v in zip(records, vectors, strict=True)]
        with self._lock:
            by_user: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                by_user.setdefault(row["user_id"], []).append(row)
            for user_id, user_rows in by_user.items():
                partition = self._partition(user_id, create=True)
                self.client.upsert(self.collection, user_rows, **_in_partition(partition))
            self._note_writes(len(rows))

    def delete(self, ids: list[str], user_id: str) -> None:
        """Delete rows by id."""
        if ids:
            with self._lock:
                partition = self._partition(user_id)
                if partition == []:
                    return
                self.client.delete(self.collection, ids=list(ids), **_in_partition(partition))
                self._note_writes(len(ids))

    def delete_user(self, user_id: str) -> int:
        """Delete every row of one user; return how many there were."""
        with self._lock:
            expr = scope_filter(user_id)
            partition = self._partition(user_id)
            if partition == []:
                return 0
            ids = [r["id"] for r in self._query(expr, partition, ["id"], limit=None)]
            for start in range(0, len(ids), 1000):
                self.client.delete(self.collection, ids=ids[start:start + 1000],
                                   **_in_partition(partition))
            self._note_writes(len(ids))
            self.flush()
            return len(ids)

    def _note_writes(self, count: int) -> None:
        self._unflushed += count
        if self._unflushed >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Seal freshly written rows so searches over them stay fast."""
        with self._lock:
            if self._unflushed:
                self.client.flush(self.collection)
                self._unflushed = 0

    # -- reads --------------------------------------------------------------------------------------------
    def known_hashes(self, user_id: str, expr: str, hashes: list[str]) -> set[str]:
        """Which of these text fingerprints the user's memories (within `expr`) already have."""
        if not hashes:
            return set()
        with self._lock:
            partition = self._partition(user_id)
            if partition == []:
                return set()
            wanted = combine(expr, f"hash in [{', '.join(literal(h) for h in hashes)}]")
            return {row["hash"] for row in self._query(wanted, partition, ["hash"], limit=None)}

    def get(self, ids: list[str]) -> list[MemoryRecord]:
        """Rows by id (missing ids are skipped)."""
        if not ids:
            return []
        with self._lock:
            rows = self.client.get(self.collection, ids=list(ids), output_fields=SCALAR_FIELDS)
        return [_record(r) for r in rows]

    def list(self, expr: str, user_id: str, limit: int | None) -> list[MemoryRecord]:
        """Rows matching an expression within one user's scope, newest first."""
        with self._lock:
            partition = self._partition(user_id)
            if partition == []:
                return []
            rows = self._query(expr, partition, SCALAR_FIELDS, limit=None)
        records = sorted((_record(r) for r in rows), key=lambda r: (r.updated_at, r.id), reverse=True)
        return records[:limit] if limit else records

    def _query(self, expr: str, partition: list[str] | None, fields: list[str], limit: int | None) -> list[dict]:
        kwargs = {"partition_names": partition} if partition else {}
        out: list[dict] = []
        iterator = self.client.query_iterator(self.collection, batch_size=1000, filter=expr, output_fields=fields,
                                              limit=limit if limit else -1, **kwargs)
        try:
            while batch := iterator.next():
                out.extend(batch)
        finally:
            iterator.close()
        return out

    def search_dense(self, vector: np.ndarray, expr: str, user_id: str, limit: int) -> list[tuple[MemoryRecord, float]]:
        """Nearest rows by cosine similarity (higher is closer)."""
        return self._search([vector.tolist()], "dense", {"metric_type": "COSINE"}, expr, user_id, limit, sign=1.0)

    def search_keyword(self, text: str, expr: str, user_id: str, limit: int) -> list[tuple[MemoryRecord, float]]:
        """Rows ranked by BM25 over the jieba-analysed text (positive scores; empty without BM25 support)."""
        if not self.keyword_search or not text.strip():
            return []
        # Milvus Lite reports BM25 as a negative distance; the server as a positive score. Use the magnitude.
        return self._search([text], "sparse", {"metric_type": "BM25"}, expr, user_id, limit, sign=None)

    def _search(self, data: list, field: str, params: dict, expr: str, user_id: str, limit: int,
                sign: float | None) -> list[tuple[MemoryRecord, float]]:
        with self._lock:
            partition = self._partition(user_id)
            if partition == []:
                return []
            hits = self.client.search(self.collection, data=data, anns_field=field, limit=limit, filter=expr,
                                      search_params=params, output_fields=SCALAR_FIELDS,
                                      **({"partition_names": partition} if partition else {}))
        out = []
        for hit in hits[0] if hits else []:
            score = float(hit["distance"])
            out.append((_record(hit["entity"] | {"id": hit["id"]}), abs(score) if sign is None else score))
        return out

    # -- lifecycle ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop and recreate the collection."""
        with self._lock:
            self.client.drop_collection(self.collection)
            self._partitions = set()
            self._unflushed = 0
            self._open_collection()

    def close(self) -> None:
        """Flush and close the client."""
        with self._lock:
            try:
                self.flush()
            finally:
                self.client.close()


def _in_partition(partition: list[str] | None) -> dict[str, str]:
    return {"partition_name": partition[0]} if partition else {}


def _row(record: MemoryRecord) -> dict[str, Any]:
    return {"id": record.id, "user_id": record.user_id, "agent_id": record.agent_id, "run_id": record.run_id,
            "text": record.text, "metadata": record.metadata, "created_at": record.created_at,
            "updated_at": record.updated_at, "event_time": record.event_time, "hash": record.hash}


def _record(row: dict[str, Any]) -> MemoryRecord:
    return MemoryRecord(id=row["id"], user_id=row["user_id"], text=row["text"], agent_id=row.get("agent_id") or "",
                        run_id=row.get("run_id") or "", metadata=dict(row.get("metadata") or {}),
                        created_at=int(row.get("created_at") or 0), updated_at=int(row.get("updated_at") or 0),
                        event_time=int(row.get("event_time") or 0), hash=row.get("hash") or "")


__all__ = ["MilvusVectorStore", "VectorStore", "combine", "scope_filter"]
