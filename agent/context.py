"""The runtime context of one chat: who is talking and how much to recall (LangGraph `context_schema`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    """Per-run settings handed to every node."""

    user_id: str
    recall_limit: int = 8
    # Fused scores below this are noise (recency and a faint vector match); they would only pad the prompt.
    recall_min_score: float = 0.15
    history_messages: int = 12
