"""The write pipeline: turn one extraction answer into a plan, journal it, and apply it to the three stores.

A plan is plain data (JSON) holding everything the stores need, embeddings included, with ids and times fixed
up front, so applying it twice gives the same state. `Memory` journals the plan, applies it, and marks it
done; a plan left open by a crash is applied again at the next start. Erasing a user (`new_erasure`) is a plan
too, so a crash half-way through an erasure finishes it at the next start.

Applied the first time (`fresh`), a plan inserts its new memories' rows without the delete a replay needs (their
ids cannot be stored yet), and its vector writes may run beside its graph writes: the two stores are independent,
and history is written after both.
"""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memory.concurrency import running_beside
from memory.graph_store import GraphStore
from memory.history import History
from memory.records import MemoryRecord, Relation, text_hash
from memory.vector_store import VectorStore
from prompts.extract import ExtractionResult


def new_plan(user_id: str, actor: str, when_ms: int) -> dict[str, Any]:
    """An empty plan for one user."""
    return {"id": str(uuid.uuid4()), "user_id": user_id, "actor": actor, "time": when_ms, "upserts": [],
            "deletes": [], "forget": [], "invalidate": [], "relations": [], "rewritten": [], "history": []}


def new_erasure(user_id: str, when_ms: int) -> dict[str, Any]:
    """A plan erasing everything of one user: vectors, graph and history, from the stores' files too."""
    plan = new_plan(user_id, "user", when_ms)
    plan["erase_user"] = True
    return plan


def add_upsert(plan: dict[str, Any], record: MemoryRecord, vector: np.ndarray, event: str,
               old_text: str | None) -> None:
    """Plan storing a record (ADD or UPDATE) and its history row."""
    plan["upserts"].append({"record": record.__dict__, "vector": pack(vector), "new": event == "ADD"})
    plan["history"].append({"id": f"{plan['id']}:{len(plan['history'])}", "memory_id": record.id,
                            "user_id": record.user_id, "event": event, "old_memory": old_text,
                            "new_memory": record.text, "actor": plan["actor"], "created_at": _iso(plan["time"])})


def add_restored(plan: dict[str, Any], record: MemoryRecord, vector: np.ndarray) -> None:
    """Plan storing a record exactly as an export holds it (its history comes with the export)."""
    plan["upserts"].append({"record": record.__dict__, "vector": pack(vector), "new": False})


def add_restored_relation(plan: dict[str, Any], relation: Relation, source_vector: np.ndarray | None,
                          destination_vector: np.ndarray | None) -> None:
    """Plan storing a relation as an export holds it: a current one is merged with an identical current relation
    of the user (as `add` would), one no longer true is stored with its id and validity window."""
    plan.setdefault("restored_relations", []).append({
        "id": relation.id, "source": relation.source, "source_type": relation.source_type,
        "relationship": relation.relationship, "destination": relation.destination,
        "destination_type": relation.destination_type, "memory_ids": relation.memory_ids,
        "valid_from": relation.valid_from.isoformat() if relation.valid_from else None,
        "valid_to": relation.valid_to.isoformat() if relation.valid_to else None,
        "source_vector": pack(source_vector) if source_vector is not None else None,
        "destination_vector": pack(destination_vector) if destination_vector is not None else None})


def add_delete(plan: dict[str, Any], record: MemoryRecord) -> None:
    """Plan removing a superseded record from search (its history stays; its relations are invalidated)."""
    plan["deletes"].append(record.id)
    plan["history"].append({"id": f"{plan['id']}:{len(plan['history'])}", "memory_id": record.id,
                            "user_id": record.user_id, "event": "DELETE", "old_memory": record.text,
                            "new_memory": None, "actor": plan["actor"], "created_at": _iso(plan["time"])})


def plan_extraction(plan: dict[str, Any], result: ExtractionResult, shown: list[MemoryRecord],
                    shown_relations: list[Relation], template: MemoryRecord, vectors: dict[str, np.ndarray],
                    existing_hashes: dict[str, str]) -> list[dict[str, Any]]:
    """Fill a plan from the model's decisions; return the public `results` list.

    `vectors` maps every memory text and entity name of the answer to its embedding; `template` carries the
    scope and times of new records; `existing_hashes` maps the fingerprints of remembered texts to a memory holding
    each: duplicates of those become NONE events naming that memory.
    """
    results: list[dict[str, Any]] = []
    plan["valid_time"] = template.event_time  # relations start (and stop) being true when the conversation says so
    types = {e.name.strip(): e.type for e in result.entities}
    touched: set[int] = set()
    for op in result.memories:
        if op.event != "ADD" and op.id in touched:
            continue  # one decision per existing memory: the first wins
        text = (op.text or "").strip()
        if op.event == "DELETE":
            old = shown[op.id]
            touched.add(op.id)
            add_delete(plan, old)
            results.append({"id": old.id, "memory": old.text, "event": "DELETE"})
            continue
        digest = text_hash(text)
        if op.event == "ADD" and digest in existing_hashes:
            results.append({"id": existing_hashes[digest], "memory": text, "event": "NONE"})
            continue
        if op.event == "UPDATE":
            old = shown[op.id]
            touched.add(op.id)
            if old.hash == digest:
                results.append({"id": old.id, "memory": old.text, "event": "NONE"})
                continue
            record = MemoryRecord(**{**old.__dict__, "text": text, "hash": digest, "updated_at": plan["time"],
                                     "event_time": template.event_time})
            add_upsert(plan, record, vectors[text], "UPDATE", old.text)
            plan["rewritten"].append(old.id)
            results.append({"id": record.id, "memory": text, "event": "UPDATE", "previous_memory": old.text})
        else:
            record = MemoryRecord(**{**template.__dict__, "id": str(uuid.uuid4()), "text": text, "hash": digest})
            add_upsert(plan, record, vectors[text], "ADD", None)
            results.append({"id": record.id, "memory": text, "event": "ADD"})
        existing_hashes[digest] = record.id
        for rel in op.relations:
            plan["relations"].append({
                "source": rel.source.strip(), "source_type": types.get(rel.source.strip(), "thing"),
                "relationship": _relation_type(rel.relationship), "destination": rel.destination.strip(),
                "destination_type": types.get(rel.destination.strip(), "thing"), "memory_id": record.id})
    plan["invalidate"].extend(shown_relations[i].id for i in result.invalidated_relations)
    plan["invalidate"] = list(dict.fromkeys(plan["invalidate"]))
    for rel in plan["relations"]:
        for end in ("source", "destination"):
            vector = vectors.get(rel[end])
            rel[f"{end}_vector"] = pack(vector) if vector is not None else None
    return results


def apply_plan(plan: dict[str, Any], vector_store: VectorStore, graph: GraphStore, history: History, *,
               fresh: bool = False, beside: Executor | None = None) -> int:
    """Apply a plan to Milvus, Kuzu and history; every step is idempotent, so replaying is safe.

    `fresh`: the plan was never applied before (not a replay), so its new memories are not stored yet. `beside`:
    an executor that runs the vector writes while this thread writes the graph. Returns the number of memories
    an erasure plan deleted (0 for other plans)."""
    user_id = plan["user_id"]
    if plan.get("erase_user"):
        count = vector_store.delete_user(user_id)
        graph.delete_user(user_id)
        history.erase_user(user_id)  # last: it also drops this plan's journal row
        return count

    def write_vectors() -> None:
        if plan["upserts"]:
            records = [MemoryRecord(**u["record"]) for u in plan["upserts"]]
            new_ids = {u["record"]["id"] for u in plan["upserts"] if fresh and u.get("new")}
            vector_store.upsert(records, np.stack([unpack(u["vector"]) for u in plan["upserts"]]), new_ids=new_ids)
        for ids in (plan["deletes"], plan["forget"]):
            if ids:
                vector_store.delete(ids, user_id)

    if beside is None:
        write_vectors()
        _write_graph(plan, graph)
    else:
        with running_beside(beside, write_vectors) as vectors_written:
            _write_graph(plan, graph)
        vectors_written.result()
    if plan["forget"]:
        history.erase_memories(plan["forget"])
    if plan["history"]:
        history.record(plan["history"])
    return 0


def _write_graph(plan: dict[str, Any], graph: GraphStore) -> None:
    """The graph's part of a plan: relations invalidated, forgotten, added and restated."""
    user_id = plan["user_id"]
    when = datetime.fromtimestamp((plan.get("valid_time") or plan["time"]) / 1000, UTC)
    if plan["deletes"]:
        graph.invalidate_memories(user_id, plan["deletes"], when)
    if plan["forget"]:
        graph.forget_memories(user_id, plan["forget"])
    if plan["invalidate"]:
        graph.invalidate(plan["invalidate"], when)
    restated = set()
    for rel in plan["relations"]:
        source = graph.resolve_entity(user_id, rel["source"], rel["source_type"], _array(rel["source_vector"]))
        destination = graph.resolve_entity(user_id, rel["destination"], rel["destination_type"],
                                           _array(rel["destination_vector"]))
        restated.add(graph.add_relation(user_id, source, rel["relationship"], destination, rel["memory_id"], when))
    for rel in plan.get("restored_relations", []):
        _restore_relation(rel, user_id, graph)
    if plan.get("rewritten"):
        # an updated memory no longer states what its old text said, unless the new text says it again
        graph.invalidate_memories(user_id, plan["rewritten"], when, keep=restated)


def _restore_relation(rel: dict[str, Any], user_id: str, graph: GraphStore) -> None:
    ends = []
    for end in ("source", "destination"):
        if rel[f"{end}_type"] == "user":  # the exported user's own node is this user's
            ends.append(graph.user_node(user_id))
        else:
            ends.append(graph.resolve_entity(user_id, rel[end], rel[f"{end}_type"], _array(rel[f"{end}_vector"])))
    valid_from = datetime.fromisoformat(rel["valid_from"]) if rel["valid_from"] else datetime.now(UTC)
    if rel["valid_to"]:
        graph.restore_relation(Relation(id=rel["id"], source=rel["source"], relationship=rel["relationship"],
                                        destination=rel["destination"], valid_from=valid_from,
                                        valid_to=datetime.fromisoformat(rel["valid_to"]),
                                        memory_ids=rel["memory_ids"]), ends[0], ends[1])
        return
    for memory_id in rel["memory_ids"] or [""]:
        graph.add_relation(user_id, ends[0], rel["relationship"], ends[1], memory_id, valid_from)


def _relation_type(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())[:100] or "related_to"


def pack(vector: np.ndarray) -> str:
    """A vector as base64 little-endian float32: a journaled plan (or an export) stays small and quick to write."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def unpack(packed: str) -> np.ndarray:
    """The vector `pack` wrote."""
    return np.frombuffer(base64.b64decode(packed), dtype="<f4").astype(np.float32)


def _array(packed: str | None) -> np.ndarray | None:
    return unpack(packed) if packed else None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
