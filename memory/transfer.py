"""Export and restore: one user's memory as a portable JSON document.

`Memory.export` writes what is remembered about a user (memories with their embeddings, the graph's entities and
relations with their validity windows, the history of every change) as one document; `Memory.restore` loads such
a document into any memory: the same one after a reset, a new data directory, another machine, or a Milvus server
when a user outgrows Milvus Lite. Restoring never stores a memory the user already has (same text, same agent and
run), so restoring twice changes nothing, and it re-embeds the texts when the document's embedder is not the one
in use. Restored under another user id, every id is mapped to a new one, so the original
user's memories in the same store are left alone.

The document is plain JSON (`MemoryExport`); times of memories are epoch milliseconds, as stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, Field, ValidationError

from memory import pipeline
from memory.errors import InputError, one_line
from memory.pipeline import pack, unpack
from memory.records import MemoryRecord, Relation, text_hash

EXPORT_FORMAT = "agent-memory-export"
EXPORT_VERSION = 1
# Memories per journaled plan when restoring: a plan holds its vectors (~2.7 KB each at 512 dimensions).
RESTORE_BATCH = 500
# Ids of a user's data restored under another user id: uuid5(this namespace, "<new user>\0<old id>").
_ID_NAMESPACE = uuid.UUID("5b0e6a8e-5f7c-4f0e-9a43-6d1f3c2b7e10")


class ExportedMemory(BaseModel):
    """One memory: its text, scope, metadata and times (epoch ms), and its embedding (base64 float32)."""

    id: str
    text: str = Field(min_length=1)
    agent_id: str = ""
    run_id: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0
    event_time: int = 0
    vector: str | None = None


class ExportedEntity(BaseModel):
    """One node of the user's graph, with its name's embedding (base64 float32)."""

    name: str = Field(min_length=1)
    type: str = "thing"
    vector: str | None = None


class ExportedRelation(BaseModel):
    """One edge of the user's graph, with its validity window and the memories that state it."""

    id: str
    source: str = Field(min_length=1)
    source_type: str = "thing"
    relationship: str = Field(min_length=1)
    destination: str = Field(min_length=1)
    destination_type: str = "thing"
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    memory_ids: list[str] = Field(default_factory=list)


class ExportedChange(BaseModel):
    """One row of the history: an ADD, UPDATE or DELETE of a memory."""

    id: str
    memory_id: str
    event: str
    old_memory: str | None = None
    new_memory: str | None = None
    actor: str | None = None
    created_at: str


class MemoryExport(BaseModel):
    """The whole document: one user's memories, graph and history."""

    format: Literal["agent-memory-export"]
    version: Literal[1]
    exported_at: datetime
    user_id: str = Field(min_length=1)
    embedding_model: str
    embedding_dims: int = Field(gt=0)
    memories: list[ExportedMemory] = Field(default_factory=list)
    entities: list[ExportedEntity] = Field(default_factory=list)
    relations: list[ExportedRelation] = Field(default_factory=list)
    history: list[ExportedChange] = Field(default_factory=list)


def embedder_name(embedder: Embeddings) -> str:
    """The name that tells whether two memories embed alike (the model, else the embedder's class)."""
    return getattr(embedder, "model", "") or type(embedder).__name__


def build_export(user_id: str, records: list[MemoryRecord], vectors: dict[str, np.ndarray],
                 entities: list[tuple[str, str, np.ndarray | None]], relations: list[Relation],
                 history: list[dict[str, Any]], *, embedding_model: str, dims: int,
                 exported_at: datetime) -> dict[str, Any]:
    """The export document (JSON-ready) of one user's stored memories, graph and history."""
    document = MemoryExport(
        format=EXPORT_FORMAT, version=EXPORT_VERSION, exported_at=exported_at, user_id=user_id,
        embedding_model=embedding_model, embedding_dims=dims,
        memories=[ExportedMemory(id=r.id, text=r.text, agent_id=r.agent_id, run_id=r.run_id, metadata=r.metadata,
                                 created_at=r.created_at, updated_at=r.updated_at, event_time=r.event_time,
                                 vector=pack(vectors[r.id]) if r.id in vectors else None) for r in records],
        entities=[ExportedEntity(name=name, type=type_, vector=pack(vector) if vector is not None else None)
                  for name, type_, vector in entities],
        relations=[ExportedRelation(id=r.id, source=r.source, source_type=r.source_type or "thing",
                                    relationship=r.relationship, destination=r.destination,
                                    destination_type=r.destination_type or "thing", valid_from=r.valid_from,
                                    valid_to=r.valid_to, memory_ids=r.memory_ids) for r in relations],
        history=[ExportedChange(**{k: v for k, v in row.items() if k != "user_id"}) for row in history])
    return document.model_dump(mode="json")


def write_document(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write an export to `path` (a file, replaced whole: an interrupted write leaves the old one); returns it."""
    target = Path(path).expanduser()
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException as exc:  # a Ctrl-C too: no partial file is left behind
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    return target


def read_document(path: str | os.PathLike[str]) -> str:
    """The text of an export file, or a one-line `InputError`."""
    target = Path(path).expanduser()
    try:
        return target.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{target} is not a memory export (not UTF-8 text)") from None
    except OSError as exc:
        raise InputError(f"cannot read {target}: {exc.strerror or exc}") from None


def parse_export(document: str | bytes | dict[str, Any]) -> MemoryExport:
    """A document read back and checked, or a one-line `InputError` saying what is wrong with it."""
    try:
        if isinstance(document, str | bytes):
            document = json.loads(document)
        return MemoryExport.model_validate(document)
    except json.JSONDecodeError as exc:
        raise InputError(f"the export is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise InputError(f"not a memory export ({exc.error_count()} problem(s)); {where}: {first['msg']}") from None


class IdMap:
    """The ids a document's data takes in the store: its own for its own user, new (stable) ones for another."""

    def __init__(self, source_user: str, target_user: str) -> None:
        self.target_user = target_user
        self._same = source_user == target_user

    def __call__(self, old_id: str) -> str:
        """The id `old_id` is stored under."""
        return old_id if self._same else str(uuid.uuid5(_ID_NAMESPACE, f"{self.target_user}\0{old_id}"))


def document_vectors(items: list[str | None], dims: int) -> np.ndarray | None:
    """The packed vectors of a document as rows, or None when any is missing; a wrong size is an InputError."""
    if any(item is None for item in items):
        return None
    try:
        rows = [unpack(item) for item in items if item is not None]
    except (ValueError, TypeError) as exc:
        raise InputError(f"the export holds a vector that is not base64 float32: {one_line(exc)}") from None
    if any(row.shape != (dims,) for row in rows):
        raise InputError(f"the export holds a vector whose size is not its embedding_dims ({dims})")
    return np.stack(rows) if rows else np.zeros((0, dims), dtype=np.float32)


def restored_record(memory: ExportedMemory, ids: IdMap) -> MemoryRecord:
    """The stored record of an exported memory, under its id in this store."""
    return MemoryRecord(id=ids(memory.id), user_id=ids.target_user, text=memory.text, agent_id=memory.agent_id,
                        run_id=memory.run_id, metadata=memory.metadata, created_at=memory.created_at,
                        updated_at=memory.updated_at, event_time=memory.event_time, hash=text_hash(memory.text))


def restore_plans(export: MemoryExport, ids: IdMap, memory_vectors: np.ndarray,
                  entity_vectors: dict[tuple[str, str], np.ndarray], existing: dict[tuple[str, str, str], str],
                  history_ids: set[str], when_ms: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The write plans that restore `export` for `ids.target_user`, and the counts of what they store.

    `memory_vectors` are the memories' embeddings in document order; `entity_vectors` the entities' by (name,
    type); `existing` maps the user's stored memories by (text hash, agent id, run id) to their ids: a memory the
    user already has is not stored again (its relations point at the one stored); `history_ids` are the ids of the
    user's history rows, which are not written again."""
    user = ids.target_user
    stored_as: dict[str, str] = {}  # exported memory id -> the id its text is stored under
    plan_of: dict[str, dict[str, Any]] = {}
    plans: list[dict[str, Any]] = []
    skipped = 0
    for memory, vector in zip(export.memories, memory_vectors, strict=True):
        record = restored_record(memory, ids)
        key = (record.hash, record.agent_id, record.run_id)
        if (twin := existing.get(key)) is not None:  # stored before (by an earlier restore, or said again)
            stored_as[memory.id] = twin
            skipped += 1
            continue
        existing[key] = record.id
        stored_as[memory.id] = record.id
        if not plans or len(plans[-1]["upserts"]) >= RESTORE_BATCH:
            plans.append(pipeline.new_plan(user, "restore", when_ms))
        pipeline.add_restored(plans[-1], record, vector)
        plan_of[memory.id] = plans[-1]
    last = pipeline.new_plan(user, "restore", when_ms)
    history = 0
    for change in export.history:
        if (change.memory_id in stored_as and change.memory_id not in plan_of) or ids(change.id) in history_ids:
            continue  # a memory not stored again has its own history
        row = change.model_dump() | {"id": ids(change.id), "memory_id": ids(change.memory_id), "user_id": user}
        plan_of.get(change.memory_id, last)["history"].append(row)
        history += 1
    for relation in reversed(export.relations):  # oldest first, as they were stored
        memory_ids = list(dict.fromkeys(stored_as.get(m) or ids(m) for m in relation.memory_ids))
        pipeline.add_restored_relation(
            last, Relation(id=ids(relation.id), source=relation.source, relationship=relation.relationship,
                           destination=relation.destination, source_type=relation.source_type,
                           destination_type=relation.destination_type, valid_from=relation.valid_from,
                           valid_to=relation.valid_to, memory_ids=memory_ids),
            entity_vectors.get((relation.source, relation.source_type)),
            entity_vectors.get((relation.destination, relation.destination_type)))
    if last["history"] or last.get("restored_relations"):
        plans.append(last)
    counts = {"memories": len(plan_of), "already_remembered": skipped, "relations": len(export.relations),
              "history": history}
    return plans, counts


__all__ = ["EXPORT_FORMAT", "IdMap", "MemoryExport", "build_export", "embedder_name", "parse_export", "restore_plans"]
