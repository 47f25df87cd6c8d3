"""The runtime context of one chat: who is talking and how much to recall (LangGraph `context_schema`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    """Per-run settings handed to every node."""

    user_id: str
    recall_limit: int = 8
    # The best result's score is its absolute match (0.5 x cosine on the reference scale + 0.5 x BM25, the BM25 part
    # counting only as far as the memory is close in meaning), the others' in proportion to their rank score.
    # Below this is noise that would only pad the prompt. The default e5 embedder separates related from
    # unrelated short texts less sharply than USE did, so the floor sits low: a "hello" may still recall a few
    # memories (at most `recall_limit`), while "Can you recommend a movie?" must find "Dislikes thrillers".
    recall_min_score: float = 0.1
    history_messages: int = 12
    # Recall waits for every exchange still being memorized, not only for those the window no longer shows
    # (`agent.nodes.make_recall`): a script's next line then sees this turn's memories, and a scripted model
    # endpoint gets its requests in order. A person typing at the terminal does not wait.
    wait_for_writes: bool = False
