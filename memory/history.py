"""The history database (SQLite, WAL): every ADD/UPDATE/DELETE of a memory, and the write journal.

History rows keep the old and new text, the time and the actor, so a superseded fact stays visible in
`Memory.history`. The journal holds each planned write before it is applied to the stores and is marked done
after; plans still open when the process died are replayed at the next start (every step is idempotent), so
Milvus, Kuzu and history never disagree for long. A plan that cannot be replayed is moved to `journal_failed`
(kept, not applied) so that one bad plan cannot stop the data directory from opening.

Erasure is real: rows are deleted with `secure_delete` (their bytes are overwritten) and the write-ahead log,
which still holds older copies of the pages, is checkpointed and truncated.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY,
    memory_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL,
    old_memory TEXT,
    new_memory TEXT,
    actor TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_memory ON history(memory_id);
CREATE INDEX IF NOT EXISTS history_user ON history(user_id);
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_failed (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at TEXT NOT NULL,
    error TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
"""


class History:
    """Memory history and the write journal in one SQLite file."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # erased rows are overwritten on disk, not just unlinked: erasure must not leave the text behind
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)

    def record(self, entries: list[dict[str, Any]]) -> None:
        """Append history rows; each entry has a unique `id`, so recording twice changes nothing."""
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO history (id, memory_id, user_id, event, old_memory, new_memory, actor, "
                "created_at) VALUES (:id, :memory_id, :user_id, :event, :old_memory, :new_memory, :actor, "
                ":created_at)", [{"actor": None, "old_memory": None, "new_memory": None, **e} for e in entries])

    def of_memory(self, memory_id: str) -> list[dict[str, Any]]:
        """The history of one memory, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, memory_id, user_id, event, old_memory, new_memory, actor, created_at FROM history "
                "WHERE memory_id = ? ORDER BY created_at, rowid", (memory_id,)).fetchall()
        keys = ("id", "memory_id", "user_id", "event", "old_memory", "new_memory", "actor", "created_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def of_user(self, user_id: str) -> list[dict[str, Any]]:
        """Every history row of one user, oldest first (for audits and consistency checks)."""
        keys = ("id", "memory_id", "user_id", "event", "old_memory", "new_memory", "actor", "created_at")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(keys)} FROM history WHERE user_id = ? ORDER BY created_at, rowid",
                (user_id,)).fetchall()
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def user_ids(self) -> list[str]:
        """The users that have history rows or journaled plans."""
        with self._lock:
            rows = self._db.execute("SELECT user_id FROM history UNION SELECT user_id FROM journal").fetchall()
        return sorted(row[0] for row in rows)

    def erase_memories(self, memory_ids: list[str]) -> None:
        """Erase every history row of these memories (real erasure, not a soft delete)."""
        with self._lock:
            self._db.executemany("DELETE FROM history WHERE memory_id = ?", [(m,) for m in memory_ids])
            self._truncate_wal()

    def erase_user(self, user_id: str) -> None:
        """Erase every history and journal row of one user, set-aside plans included, from the files too."""
        with self._lock:
            self._db.execute("DELETE FROM history WHERE user_id = ?", (user_id,))
            self._db.execute("DELETE FROM journal WHERE user_id = ?", (user_id,))
            self._db.execute("DELETE FROM journal_failed WHERE user_id = ?", (user_id,))
            self._truncate_wal()

    def _truncate_wal(self) -> None:
        """Copy the write-ahead log into the database and empty it: older page images in it may still hold
        erased text (secure_delete overwrites only the current pages)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def begin(self, plan_id: str, user_id: str, plan: dict[str, Any]) -> None:
        """Journal a plan before any store is touched."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO journal (id, user_id, plan, created_at) VALUES (?, ?, ?, ?)",
                             (plan_id, user_id, json.dumps(plan, ensure_ascii=False), _now()))

    def commit(self, plan_id: str) -> None:
        """Mark a journaled plan as fully applied."""
        with self._lock:
            self._db.execute("DELETE FROM journal WHERE id = ?", (plan_id,))

    def pending(self) -> list[tuple[str, str]]:
        """(id, plan JSON) of the plans journaled but not committed (the process stopped while applying them),
        oldest first."""
        with self._lock:
            return [(row[0], row[1]) for row in
                    self._db.execute("SELECT id, plan FROM journal ORDER BY created_at, rowid").fetchall()]

    def set_aside(self, plan_id: str, error: str) -> None:
        """Move a journaled plan that cannot be applied to `journal_failed`, with the reason."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO journal_failed (id, user_id, plan, created_at, error, "
                                 "failed_at) SELECT id, user_id, plan, created_at, ?, ? FROM journal WHERE id = ?",
                                 (error, _now(), plan_id))
                self._db.execute("DELETE FROM journal WHERE id = ?", (plan_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def set_aside_count(self) -> int:
        """How many plans were set aside (see `set_aside`)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM journal_failed").fetchone()[0])

    def reset(self) -> None:
        """Erase all history and journal rows."""
        with self._lock:
            self._db.execute("DELETE FROM history")
            self._db.execute("DELETE FROM journal")
            self._db.execute("DELETE FROM journal_failed")
            self._truncate_wal()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()
