"""The data shapes shared by the memory pipeline and the stores."""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The metadata key holding when a memory expires (epoch ms; `Memory.add(expiration_date=...)`). Results show it
# as their own `expires_at` field rather than in `metadata`.
EXPIRY_KEY = "expires_at"


@dataclass
class MemoryRecord:
    """One memory as stored in the vector store (times are epoch milliseconds)."""

    id: str
    user_id: str
    text: str
    agent_id: str = ""
    run_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0
    event_time: int = 0
    hash: str = ""

    @property
    def expires_at(self) -> int | None:
        """When this memory expires (epoch ms), or None if it does not."""
        value = self.metadata.get(EXPIRY_KEY)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def expired(self, now: int) -> bool:
        """Whether this memory's expiration date has passed at `now` (epoch ms)."""
        expires = self.expires_at
        return expires is not None and expires <= now

    def to_result(self, score: float | None = None) -> dict[str, Any]:
        """The public, Mem0-compatible shape of this memory."""
        result: dict[str, Any] = {"id": self.id, "memory": self.text}
        if score is not None:
            result["score"] = round(float(score), 4)
        metadata = {k: v for k, v in self.metadata.items() if k != EXPIRY_KEY}
        result.update({"metadata": metadata, "created_at": iso(self.created_at),
                       "updated_at": iso(self.updated_at), "event_time": iso(self.event_time),
                       "user_id": self.user_id, "agent_id": self.agent_id or None, "run_id": self.run_id or None})
        if self.expires_at is not None:
            result["expires_at"] = iso(self.expires_at)
        return result


@dataclass
class Relation:
    """One edge of the user's graph: `source -relationship-> destination`, valid in [valid_from, valid_to)."""

    id: str
    source: str
    relationship: str
    destination: str
    source_type: str = ""
    destination_type: str = ""
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    memory_ids: list[str] = field(default_factory=list)

    def to_result(self) -> dict[str, Any]:
        """The public shape of this relation."""
        return {"source": self.source, "relationship": self.relationship, "destination": self.destination,
                "valid_from": self.valid_from.isoformat() if self.valid_from else None,
                "valid_to": self.valid_to.isoformat() if self.valid_to else None}


def now_ms() -> int:
    """The current time in epoch milliseconds."""
    return int(time.time() * 1000)


def to_ms(moment: datetime | str | None) -> int:
    """A datetime or ISO string as epoch milliseconds (naive times are taken as UTC); None is now."""
    if moment is None:
        return now_ms()
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.strip().replace("Z", "+00:00"))
    if not isinstance(moment, datetime):
        raise TypeError("timestamp must be a datetime or an ISO 8601 string")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str | None:
    """Epoch milliseconds as an ISO 8601 UTC string (None for 0)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


def normalize_text(text: str) -> str:
    """Text folded for comparison: NFKC, case-folded, punctuation dropped, white space collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def text_hash(text: str) -> str:
    """A stable fingerprint of a memory's normalised text, used to stop duplicates piling up."""
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()[:32]
