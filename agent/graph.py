"""The chat graph: START -> recall -> respond -> memorize -> END.

`build_graph` takes the memory, the chat model and the background writer, so tests and other applications
inject their own. `graph` (module attribute, built on first access from the environment) is the ready graph
for LangGraph tooling.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

from agent.context import Context
from agent.nodes import make_memorize, make_recall, make_respond
from agent.state import State
from agent.writer import MemoryWriter
from memory import Memory

# How a chat runs each turn (`invoke` / `stream`'s `durability`). The session lives in memory and nothing resumes
# a half-run turn, so one checkpoint as the turn ends is enough: LangGraph's default ("async") writes one per step,
# 2-3.5 ms of a turn here (the graph alone, 3 interleaved runs: p50 5.7-7.1 ms, against 3.3-5.2 ms).
TURN_DURABILITY: Durability = "exit"


def build_graph(memory: Memory, model: BaseChatModel, writer: MemoryWriter | None = None, *, infer: bool = True,
                checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """Compile the recall -> respond -> memorize graph over these collaborators.

    `infer=False` stores the user's words verbatim instead of asking the model to extract facts (offline mode).
    The session's messages live in the checkpointer (in memory by default), one thread per chat session.
    """
    writer = writer or MemoryWriter(memory)
    builder = StateGraph(State, context_schema=Context)
    builder.add_node("recall", make_recall(memory, writer, reads_window=getattr(model, "reads_conversation", True)))
    builder.add_node("respond", make_respond(model))
    builder.add_node("memorize", make_memorize(writer, infer))
    builder.add_edge(START, "recall")
    builder.add_edge("recall", "respond")
    builder.add_edge("respond", "memorize")
    builder.add_edge("memorize", END)
    return builder.compile(checkpointer=checkpointer or InMemorySaver(), name="memory-agent")


def __getattr__(name: str) -> Any:
    """`graph`: a ready graph from the environment's configuration, built on first access."""
    if name != "graph":
        raise AttributeError(name)
    from agent.settings import build_runtime

    runtime = build_runtime()
    globals()["graph"] = runtime.graph
    return runtime.graph
