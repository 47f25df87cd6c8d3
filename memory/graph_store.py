"""The graph store: each user's entities and relations in Kuzu on disk.

Entities are typed nodes scoped to one user; the user's own "I/me/my" is a node of type `user`. A name seen
again (case, width and spacing folded), or one whose embedding is nearly identical to an entity of the same
type, is the same node. Relations are edges with a type, a validity window (`valid_from`, `valid_to`) and the
ids of the memories they came from: a relation that stops being true gets a `valid_to`, it is not deleted.
Every query is parameterised; no Cypher is built from user data.

The data directory is this process's alone, so the store keeps, for the users it served last, their entities and
their current relations in memory, kept up to date by its own writes: a search or an add reads the relations of
the entities it names without a Kuzu query (two queries took 2.5-3 ms alone and 7-11 ms beside a search's other
parts, ~8 ms for the user's own node with 2,000 edges).

Kuzu keeps the bytes of deleted nodes and edges in its file (it has no vacuum), so erasing a user rewrites the
database: the remaining graph is copied into a fresh file (written by a new process, `memory.graph_copy`) that
atomically replaces the old one, whose blocks are then overwritten with zeros. Nothing of the erased user is left
in the graph's files.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import kuzu
import numpy as np

from memory.embeddings import DEFAULT_SAME_ENTITY_COSINE
from memory.errors import StoreBusyError, StoreError, one_line
from memory.graph_copy import copy_in_new_process, discard_inputs
from memory.records import Relation, normalize_text

log = logging.getLogger(__name__)

USER_ALIASES = {"user", "i", "me", "my", "myself", "mine", "我", "我的", "自己", "本人"}
ENTITY_CACHE_USERS = 64
# Users whose entities' name vectors are kept in memory (~1.5 KB an entity of 384 dims).
ENTITY_VECTOR_USERS = 8

_SCHEMA = [
    "CREATE NODE TABLE IF NOT EXISTS Entity(id STRING, user_id STRING, name STRING, norm STRING, type STRING, "
    "embedding FLOAT[], created_at TIMESTAMP, PRIMARY KEY(id))",
    "CREATE REL TABLE IF NOT EXISTS RELATES(FROM Entity TO Entity, id STRING, rel_type STRING, "
    "valid_from TIMESTAMP, valid_to TIMESTAMP, memory_ids STRING[], created_at TIMESTAMP)",
]
# One relation by id, found from its two nodes (see `KuzuGraphStore._edge_match`).
_EDGE_BETWEEN = "MATCH (a:Entity {id: $a})-[r:RELATES]->(b:Entity {id: $b}) WHERE r.id = $id"
_REL_FIELDS = ("r.id, a.name, a.type, r.rel_type, b.name, b.type, r.valid_from, r.valid_to, r.memory_ids")


@dataclass
class Entity:
    """A node of a user's graph."""

    id: str
    name: str
    type: str
    norm: str
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class _Edge:
    """A current relation as the store keeps it in memory: its ends' node ids and its creation time, for the
    lookups and the order of `KuzuGraphStore.relations`. Replaced, never changed: callers may hold the relation."""

    source_id: str
    destination_id: str
    created_at: datetime
    relation: Relation


class GraphStore(Protocol):
    """What the memory pipeline needs from a graph store."""

    def user_node(self, user_id: str) -> str: ...
    def resolve_entity(self, user_id: str, name: str, type_: str, embedding: np.ndarray | None) -> str: ...
    def add_relation(self, user_id: str, source_id: str, rel_type: str, destination_id: str, memory_id: str,
                     valid_from: datetime) -> str: ...
    def restore_relation(self, relation: Relation, source_id: str, destination_id: str) -> None: ...
    def invalidate(self, relation_ids: list[str], valid_to: datetime) -> None: ...
    def invalidate_memories(self, user_id: str, memory_ids: list[str], valid_to: datetime,
                            keep: set[str] | frozenset[str] = frozenset()) -> None: ...
    def entities(self, user_id: str, *, vectors: bool = False) -> list[Entity]: ...
    def relations(self, user_id: str, entity_ids: list[str] | None = None, current_only: bool = True,
                  limit: int = 100, as_of: datetime | None = None) -> list[Relation]: ...
    def forget_memories(self, user_id: str, memory_ids: list[str]) -> None: ...
    def delete_user(self, user_id: str) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class KuzuGraphStore:
    """Entities and relations in a Kuzu database directory; see the module docstring."""

    def __init__(self, path: str, *, same_entity_cosine: float = DEFAULT_SAME_ENTITY_COSINE) -> None:
        """Open (or create) the database at `path`; names embedded `same_entity_cosine` alike or closer (and of one
        type) are one entity (see `memory.embeddings.same_entity_cosine`)."""
        self.path = path
        self.same_entity_cosine = same_entity_cosine
        self._lock = threading.RLock()
        # a rewrite a crash interrupted: the original is still whole
        remove_database(path + _REWRITE_SUFFIX)
        discard_inputs(path + _REWRITE_SUFFIX)
        self._db, self._conn = open_database(path)
        self._statements: dict[str, kuzu.PreparedStatement] = {}
        # users whose own node is known to exist: its MERGE, a write transaction (~4 ms), runs once per process
        # rather than at every relation of "I"; forgotten wherever entities are deleted
        self._user_nodes: set[str] = set()
        # The entities (no vectors) of the users searched last: every search looks for their names in the query,
        # and reading 2,000 of them takes ~7 ms. Kept up to date by this store's own writes (the data directory
        # is this process's alone).
        self._entity_cache: OrderedDict[str, list[Entity]] = OrderedDict()
        # The current relations of the same users, by relation id (see the module docstring).
        self._relation_cache: OrderedDict[str, dict[str, _Edge]] = OrderedDict()
        # The name vectors of the entities of the users that named a new entity last, by (type, dims): a new name
        # is compared with them here (~0.1 ms) rather than in Kuzu, which scanned every user's entities and took
        # 6-7 ms at 1,000 entities of the user, 11-16 ms among 20,000 of 20 users. Read from Kuzu once per user.
        self._entity_vectors: OrderedDict[str, dict[tuple[str, int], tuple[list[str], np.ndarray]]] = OrderedDict()

    def _run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        """Run one query; Kuzu's failure (a damaged file, a full disk) is a one-line `StoreError`, and the relations
        kept in memory are read anew afterwards (a failed write may have been applied in part)."""
        with self._lock:
            try:
                return self._execute(query, params)
            except RuntimeError as exc:
                self._relation_cache.clear()
                raise StoreError(f"Kuzu could not run a graph query: {one_line(exc)}") from exc

    def _execute(self, query: str, params: dict[str, Any] | None) -> list[list[Any]]:
        if not params:
            return _rows(self._conn, query)
        # Kuzu 0.11 keeps every statement it prepares from a query string until the connection closes
        # (measured: ~10 KB per read, ~60 KB per write of a vector, never freed), so a process would grow
        # with every search and add. One prepared statement per query text stops that, and plans each query
        # once (0.2 ms instead of ~1.3 ms a read).
        statement = self._statements.get(query)
        if statement is None:
            statement = kuzu.PreparedStatement(self._conn, query)
            if not statement.is_success():
                raise RuntimeError(statement.get_error_message())
            self._statements[query] = statement
        return _rows(self._conn, statement, params)

    # -- entities -----------------------------------------------------------------------------------------
    def user_node(self, user_id: str) -> str:
        """The id of the node standing for the user themself (created on first use)."""
        node_id = "user:" + user_id
        with self._lock:
            if user_id not in self._user_nodes:
                self._run("MERGE (e:Entity {id: $id}) ON CREATE SET e.user_id = $u, e.name = $u, e.norm = 'user', "
                          "e.type = 'user', e.created_at = $t", {"id": node_id, "u": user_id, "t": _now()})
                self._user_nodes.add(user_id)
                self._entity_cache.pop(user_id, None)
        return node_id

    def resolve_entity(self, user_id: str, name: str, type_: str, embedding: np.ndarray | None) -> str:
        """The id of this user's node for `name`, creating it when no existing node is the same entity."""
        norm = normalize_text(name)
        if names_user(name):
            return self.user_node(user_id)
        with self._lock:
            known = next((entity.id for entity in self.entities(user_id) if entity.norm == norm), None)
            if known is not None:
                return known
            if embedding is not None and (same := self._same_entity(user_id, type_, embedding)) is not None:
                return same
            node_id = str(uuid.uuid4())
            self._run("CREATE (e:Entity {id: $id, user_id: $u, name: $n, norm: $norm, type: $type, embedding: $emb, "
                      "created_at: $t})", {"id": node_id, "u": user_id, "n": name.strip(), "norm": norm,
                                           "type": type_ or "thing",
                                           "emb": embedding.tolist() if embedding is not None else None, "t": _now()})
            if (cached := self._entity_cache.get(user_id)) is not None:
                cached.append(Entity(id=node_id, name=name.strip(), type=type_ or "thing", norm=norm))
            if embedding is not None and (kept := self._entity_vectors.get(user_id)) is not None:
                key = (type_ or "thing", len(embedding))
                ids, matrix = kept.get(key, ([], _unit_rows([], key[1])))
                kept[key] = ([*ids, node_id], np.vstack([matrix, _unit_rows([embedding], key[1])]))
            return node_id

    def _same_entity(self, user_id: str, type_: str, embedding: np.ndarray) -> str | None:
        """The user's entity of this type (and vector size) whose name vector is closest to `embedding`, if it is
        `same_entity_cosine` alike or closer. Call it under the store's lock."""
        kept = self._entity_vectors.get(user_id)
        if kept is None:
            groups: dict[tuple[str, int], tuple[list[str], list[list[float]]]] = {}
            for node_id, type_of, vector in self._run("MATCH (e:Entity) WHERE e.user_id = $u AND e.embedding IS NOT "
                                                      "NULL RETURN e.id, e.type, e.embedding", {"u": user_id}):
                if vector:
                    ids, vectors = groups.setdefault((type_of, len(vector)), ([], []))
                    ids.append(node_id)
                    vectors.append(vector)
            kept = {key: (ids, _unit_rows(vectors, key[1])) for key, (ids, vectors) in groups.items()}
            self._entity_vectors[user_id] = kept
            while len(self._entity_vectors) > ENTITY_VECTOR_USERS:
                self._entity_vectors.popitem(last=False)
        else:
            self._entity_vectors.move_to_end(user_id)
        ids, matrix = kept.get((type_, len(embedding)), ([], None))
        if not ids or matrix is None:
            return None
        scores = matrix @ _unit_rows([embedding], len(embedding))[0]
        best = int(np.argmax(scores))
        return ids[best] if scores[best] >= self.same_entity_cosine else None

    def entities(self, user_id: str, *, vectors: bool = False) -> list[Entity]:
        """All entities of one user (the user's own node included), with their name vectors when `vectors`
        (hundreds of 384-float lists cost milliseconds to read; finding names in a query needs none)."""
        with self._lock:
            if not vectors and (cached := self._entity_cache.get(user_id)) is not None:
                self._entity_cache.move_to_end(user_id)
                return list(cached)
            fields = "e.id, e.name, e.type, e.norm" + (", e.embedding" if vectors else "")
            rows = self._run(f"MATCH (e:Entity) WHERE e.user_id = $u RETURN {fields}", {"u": user_id})
            found = [Entity(id=r[0], name=r[1], type=r[2], norm=r[3],
                            embedding=np.asarray(r[4], dtype=np.float32) if vectors and r[4] else None) for r in rows]
            if not vectors:
                self._entity_cache[user_id] = list(found)
                while len(self._entity_cache) > ENTITY_CACHE_USERS:
                    self._entity_cache.popitem(last=False)
            return found

    # -- relations ----------------------------------------------------------------------------------------
    def add_relation(self, user_id: str, source_id: str, rel_type: str, destination_id: str, memory_id: str,
                     valid_from: datetime) -> str:
        """Record `source -rel_type-> destination`; an identical current relation gains the memory id instead."""
        with self._lock:
            edges = self._current_edges(user_id)
            same = next((e for e in edges.values() if e.source_id == source_id and e.destination_id == destination_id
                         and e.relation.relationship == rel_type), None)
            if same is not None:
                relation = same.relation
                if memory_id and memory_id not in relation.memory_ids:
                    self._set_memory_ids(user_id, relation.id, [*relation.memory_ids, memory_id])
                return relation.id
            rel_id, created, start = str(uuid.uuid4()), _now(), _naive(valid_from)
            ends = self._run("MATCH (a:Entity {id: $a}), (b:Entity {id: $b}) CREATE (a)-[:RELATES {id: $id, "
                             "rel_type: $t, valid_from: $vf, valid_to: NULL, memory_ids: $m, created_at: $now}]->(b) "
                             "RETURN a.name, a.type, b.name, b.type",
                             {"a": source_id, "b": destination_id, "id": rel_id, "t": rel_type,
                              "m": [memory_id] if memory_id else [], "now": created, "vf": start})
            if ends:
                edges[rel_id] = _Edge(source_id, destination_id, created, Relation(
                    id=rel_id, source=ends[0][0], source_type=ends[0][1], relationship=rel_type,
                    destination=ends[0][2], destination_type=ends[0][3], valid_from=_utc(start),
                    memory_ids=[memory_id] if memory_id else []))
            return rel_id

    def restore_relation(self, relation: Relation, source_id: str, destination_id: str) -> None:
        """Store an exported relation as it was (id, type, validity window, memory ids) between these nodes;
        nothing changes if its id is stored already."""
        with self._lock:
            if self._run(f"{_EDGE_BETWEEN} RETURN r.id", {"id": relation.id, "a": source_id, "b": destination_id}):
                return
            self._run("MATCH (a:Entity {id: $a}), (b:Entity {id: $b}) CREATE (a)-[:RELATES {id: $id, rel_type: $t, "
                      "valid_from: $vf, valid_to: $vt, memory_ids: $m, created_at: $now}]->(b)",
                      {"a": source_id, "b": destination_id, "id": relation.id, "t": relation.relationship,
                       "m": list(relation.memory_ids), "now": _now(),
                       "vf": _naive(relation.valid_from) if relation.valid_from else None,
                       "vt": _naive(relation.valid_to) if relation.valid_to else None})
            if relation.valid_to is None:  # a current relation: its user's are read anew
                self._relation_cache.clear()

    def invalidate(self, relation_ids: list[str], valid_to: datetime) -> None:
        """Mark relations as no longer true from `valid_to` on (kept for history and "as of" queries)."""
        with self._lock:
            for rel_id in relation_ids:
                match, params = self._edge_match(rel_id)
                self._run(f"{match} AND r.valid_to IS NULL SET r.valid_to = $t", {**params, "t": _naive(valid_to)})
                for edges in self._relation_cache.values():
                    edges.pop(rel_id, None)

    def invalidate_memories(self, user_id: str, memory_ids: list[str], valid_to: datetime,
                            keep: set[str] | frozenset[str] = frozenset()) -> None:
        """These memories no longer state their current relations (they were superseded or rewritten): a
        relation no other memory states is invalidated; one that others also state only loses these ids.
        Relations in `keep` (restated by the rewritten text) are left as they are."""
        with self._lock:
            for rel_id, ids in self._stated_by(user_id, memory_ids, current_only=True):
                if rel_id in keep:
                    continue
                remaining = [i for i in ids if i not in memory_ids]
                if remaining:
                    self._set_memory_ids(user_id, rel_id, remaining)
                else:
                    self.invalidate([rel_id], valid_to)

    def relations(self, user_id: str, entity_ids: list[str] | None = None, current_only: bool = True,
                  limit: int = 100, as_of: datetime | None = None) -> list[Relation]:
        """A user's relations, optionally only those touching the given entities, newest first; with `as_of`,
        those that were true at that moment instead of the current ones. The current ones come from memory."""
        if current_only and as_of is None:
            with self._lock:
                edges: Any = self._current_edges(user_id).values()
                if entity_ids is not None:
                    named = set(entity_ids)
                    edges = [e for e in edges if e.source_id in named or e.destination_id in named]
                return [e.relation for e in heapq.nlargest(limit, edges, key=lambda e: e.created_at)]
        where = ["a.user_id = $u"]
        params: dict[str, Any] = {"u": user_id, "limit": limit}
        if as_of is not None:
            where.append("r.valid_from <= $at AND (r.valid_to IS NULL OR r.valid_to > $at)")
            params["at"] = _naive(as_of)
        if entity_ids is None:
            rows = self._run(f"MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE {' AND '.join(where)} "
                             f"RETURN {_REL_FIELDS}, r.created_at ORDER BY r.created_at DESC LIMIT $limit", params)
        else:
            # The edges from the entities, then those to them: each query starts at the named nodes. One query
            # testing either end scans every edge of the user (2,000 edges: 10-25 ms against 1-2 ms).
            params["ids"] = entity_ids
            rows = []
            for end in ("a", "b") if entity_ids else ():
                rows += self._run(f"MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE {end}.id IN $ids AND "
                                  f"{' AND '.join(where)} RETURN {_REL_FIELDS}, r.created_at "
                                  f"ORDER BY r.created_at DESC LIMIT $limit", params)
            unique = {row[0]: row for row in rows}.values()  # an edge between two named entities comes twice
            rows = sorted(unique, key=lambda row: row[9] or datetime.min, reverse=True)[:limit]
        return [_relation(row) for row in rows]

    def _current_edges(self, user_id: str) -> dict[str, _Edge]:
        """The user's current relations by id, kept in memory (read from Kuzu for a user not kept); call it under
        the store's lock, and change what it returns only as Kuzu changes."""
        edges = self._relation_cache.get(user_id)
        if edges is None:
            rows = self._run(f"MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE a.user_id = $u AND r.valid_to IS NULL "
                             f"RETURN {_REL_FIELDS}, r.created_at, a.id, b.id", {"u": user_id})
            edges = {row[0]: _Edge(row[10], row[11], row[9], _relation(row)) for row in rows}
            self._relation_cache[user_id] = edges
            while len(self._relation_cache) > ENTITY_CACHE_USERS:
                self._relation_cache.popitem(last=False)
        else:
            self._relation_cache.move_to_end(user_id)
        return edges

    def _edge_match(self, rel_id: str, user_id: str | None = None) -> tuple[str, dict[str, Any]]:
        """A MATCH of relation `rel_id` (as `r`, for a SET) and its parameters: from its two nodes where it is a
        current relation kept in memory (of `user_id`, or of any user kept), else among every edge. Kuzu has no
        index on a relation's properties: matched by id alone, it reads every user's edges (20,000 edges: 6.5 ms
        a write, against 1.0 from the nodes, found by their primary key)."""
        kept = [self._relation_cache.get(user_id)] if user_id is not None else self._relation_cache.values()
        for edges in kept:
            if edges is not None and (edge := edges.get(rel_id)) is not None:
                return _EDGE_BETWEEN, {"id": rel_id, "a": edge.source_id, "b": edge.destination_id}
        return "MATCH ()-[r:RELATES]->() WHERE r.id = $id", {"id": rel_id}

    def _set_memory_ids(self, user_id: str, rel_id: str, memory_ids: list[str]) -> None:
        """Set the memories that state one of the user's relations."""
        match, params = self._edge_match(rel_id, user_id)
        self._run(f"{match} SET r.memory_ids = $m", {**params, "m": memory_ids})
        edges = self._relation_cache.get(user_id)
        if edges is not None and (edge := edges.get(rel_id)) is not None:
            edges[rel_id] = replace(edge, relation=replace(edge.relation, memory_ids=list(memory_ids)))

    def _stated_by(self, user_id: str, memory_ids: list[str], current_only: bool) -> list[tuple[str, list[str]]]:
        """(relation id, its memory ids) of the user's relations (the current ones, from memory, or all) stated by any
        of these memories.

        Filtered here rather than in Cypher: Kuzu 0.11 has no list intersection function."""
        wanted = set(memory_ids)
        if current_only:
            return [(e.relation.id, list(e.relation.memory_ids)) for e in self._current_edges(user_id).values()
                    if wanted.intersection(e.relation.memory_ids)]
        rows = self._run("MATCH (a:Entity)-[r:RELATES]->(:Entity) WHERE a.user_id = $u RETURN r.id, r.memory_ids",
                         {"u": user_id})
        return [(row[0], list(row[1] or [])) for row in rows if wanted.intersection(row[1] or [])]

    # -- audits -------------------------------------------------------------------------------------------
    def user_ids(self) -> list[str]:
        """The users that have nodes in the graph."""
        return sorted(row[0] for row in self._run("MATCH (e:Entity) RETURN DISTINCT e.user_id"))

    def orphans(self, user_id: str) -> list[str]:
        """Names of this user's entities that no relation touches (none should outlive their relations)."""
        return [row[0] for row in self._run("MATCH (e:Entity) WHERE e.user_id = $u AND NOT EXISTS "
                                            "{ MATCH (e)-[:RELATES]-() } RETURN e.name", {"u": user_id})]

    def cross_user_relations(self) -> list[tuple[str, str, str]]:
        """(relation id, source user, destination user) of edges joining two users' graphs (there must be none)."""
        return [(row[0], row[1], row[2]) for row in self._run(
            "MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE a.user_id <> b.user_id RETURN r.id, a.user_id, b.user_id")]

    # -- erasure ------------------------------------------------------------------------------------------
    def forget_memories(self, user_id: str, memory_ids: list[str]) -> None:
        """Erase what these memories contributed: edges keep only other sources; unsupported edges and
        entities left with no edge are deleted."""
        if not memory_ids:
            return
        with self._lock:
            for rel_id, ids in self._stated_by(user_id, memory_ids, current_only=False):
                remaining = [i for i in ids or [] if i not in memory_ids]
                match, params = self._edge_match(rel_id, user_id)
                if remaining:
                    self._run(f"{match} SET r.memory_ids = $m", {**params, "m": remaining})
                else:
                    self._run(f"{match} DELETE r", params)
            self._run("MATCH (e:Entity) WHERE e.user_id = $u AND NOT EXISTS { MATCH (e)-[:RELATES]-() } "
                      "DELETE e", {"u": user_id})
            self._user_nodes.discard(user_id)
            self._entity_cache.pop(user_id, None)
            self._entity_vectors.pop(user_id, None)
            self._relation_cache.pop(user_id, None)

    def delete_user(self, user_id: str) -> None:
        """Erase every node and edge of one user, from the database and from its files (see `purge`)."""
        with self._lock:
            self._run("MATCH (e:Entity) WHERE e.user_id = $u DETACH DELETE e", {"u": user_id})
            self._user_nodes.discard(user_id)
            self._entity_cache.pop(user_id, None)
            self._entity_vectors.pop(user_id, None)
            self._relation_cache.pop(user_id, None)
            self.purge()

    def reset(self) -> None:
        """Erase the whole graph, files included."""
        with self._lock:
            self._run("MATCH (e:Entity) DETACH DELETE e")
            self._user_nodes.clear()
            self._entity_cache.clear()
            self._entity_vectors.clear()
            self._relation_cache.clear()
            self.purge()

    def purge(self) -> None:
        """Rewrite the database so that deleted nodes and edges leave no bytes behind.

        The live graph is copied into `<path>.rewrite` (bulk COPY, by a new process: see
        `memory.graph_copy`), which then replaces the database file atomically; the old file's blocks are
        overwritten with zeros through a handle kept open across the rename. A crash before the rename leaves the
        old database whole (the stray copy is removed at the next open); after it, the new one. Costs a read and
        a bulk write of the whole graph, and a new process (~1 s). If the copy cannot be made, the database stays
        as it is (deletions done, their bytes not yet gone) with a warning.
        """
        with self._lock:
            fresh = self.path + _REWRITE_SUFFIX
            try:
                self._copy_to(fresh)
            except Exception as exc:
                remove_database(fresh)
                log.warning("the graph database could not be rewritten (%s); deleted entries keep their bytes in "
                            "%s until the next erasure", one_line(exc), self.path)
                return
            self._run("CHECKPOINT")  # the old log is empty: removing it below loses nothing
            self._statements.clear()
            self._conn.close()
            self._db.close()
            remove_database(self.path + ".wal")
            with open(self.path, "r+b") as old:
                os.replace(fresh, self.path)
                sync_file(os.path.dirname(os.path.abspath(self.path)))
                _zero(old)
            remove_database(fresh + ".wal")
            self._db, self._conn = open_database(self.path)

    def _copy_to(self, fresh: str) -> None:
        """Copy every live node and edge into a new database at `fresh` (durably), written by a new process
        (see `memory.graph_copy`: Kuzu would write bytes of this process' memory into the copy)."""
        nodes = self._run("MATCH (e:Entity) RETURN e.id, e.user_id, e.name, e.norm, e.type, e.embedding, "
                          "e.created_at")
        edges = self._run("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.id, r.id, r.rel_type, "
                          "r.valid_from, r.valid_to, r.memory_ids, r.created_at")
        copy_in_new_process(fresh, nodes, edges)

    def close(self) -> None:
        """Close the connection and the database (releasing its lock)."""
        with self._lock:
            self._statements.clear()  # before their connection: a statement must not outlive it
            self._conn.close()
            self._db.close()


_REWRITE_SUFFIX = ".rewrite"
# Kuzu's default buffer pool is 80% of the machine's memory, and it books ~2 bytes per KB of it at open (42 MB on
# a 24 GB machine) before a page is read. A chat's graph (entities and relations, no texts) fits far below this;
# a larger one spills to disk.
BUFFER_POOL_BYTES = 256 * 1024 * 1024


def open_database(path: str) -> tuple[kuzu.Database, kuzu.Connection]:
    """Open (or create) a graph database with this module's schema."""
    try:
        db = kuzu.Database(path, buffer_pool_size=BUFFER_POOL_BYTES)
    except RuntimeError as exc:
        if "lock" in str(exc).lower():
            raise StoreBusyError(f"the graph database {path} is in use by another process") from exc
        raise StoreError(f"cannot open the Kuzu database at {path}: {one_line(exc)}") from exc
    conn = kuzu.Connection(db)
    for statement in _SCHEMA:
        _rows(conn, statement)
    return db, conn


def _unit_rows(vectors: Any, dims: int) -> np.ndarray:
    """Vectors as float32 rows of unit length (a (0, dims) array for none), so a dot product is their cosine."""
    rows = np.asarray(vectors, dtype=np.float32).reshape(-1, dims)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _rows(conn: kuzu.Connection, query: str | kuzu.PreparedStatement,
          params: dict[str, Any] | None = None) -> list[list[Any]]:
    result = conn.execute(query, params or {})
    rows = []
    while result.has_next():
        rows.append(result.get_next())
    return rows


def remove_database(path: str) -> None:
    """Remove a database file (or directory) and its write-ahead log, if present."""
    for name in (path, path + ".wal"):
        if os.path.isdir(name):
            shutil.rmtree(name, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def sync_file(path: str) -> None:
    """Flush a file (or directory) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zero(handle: Any) -> None:
    """Overwrite an open file's bytes with zeros (it was unlinked; its blocks must not keep erased data)."""
    size = os.fstat(handle.fileno()).st_size
    handle.seek(0)
    chunk = b"\0" * (1 << 20)
    for start in range(0, size, len(chunk)):
        handle.write(chunk[:min(len(chunk), size - start)])
    handle.flush()
    os.fsync(handle.fileno())


def names_user(name: str) -> bool:
    """True when an entity name the model gave stands for the user themself (USER, I, me, 我...)."""
    return normalize_text(name) in USER_ALIASES or name.strip().upper() == "USER"


def _relation(row: list[Any]) -> Relation:
    """A relation from a row that starts with `_REL_FIELDS`."""
    return Relation(id=row[0], source=row[1], source_type=row[2], relationship=row[3], destination=row[4],
                    destination_type=row[5], valid_from=_utc(row[6]), valid_to=_utc(row[7]),
                    memory_ids=list(row[8] or []))


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(value: datetime) -> datetime:
    """Kuzu TIMESTAMPs are naive: store UTC."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value
