"""The runtime context of one chat: who is talking and how much to recall (LangGraph `context_schema`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    """Per-run settings handed to every node."""

    user_id: str
    recall_limit: int = 8
    # The best result's score is its absolute match (0.4 x cosine + 0.6 x BM25, the BM25 part counting only as far
    # as the memory is close in meaning), the others' in proportion to their rank score. Below this is noise (a
    # faint vector match, a word shared with an unrelated memory, recency) that would only pad the prompt.
    recall_min_score: float = 0.15
    history_messages: int = 12
