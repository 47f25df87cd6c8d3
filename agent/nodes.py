"""The three nodes of the chat graph: recall, respond, memorize.

Each is built by a factory that receives its collaborators (the memory, the chat model, the writer), so tests
and other applications inject their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, SystemMessage
from langgraph.runtime import Runtime

from agent.context import Context
from agent.state import State
from agent.writer import Exchange, MemoryWriter
from memory import Memory, MemoryLayerError
from memory.errors import one_line
from prompts import load

log = logging.getLogger(__name__)
NodeFn = Callable[[State, Runtime[Context]], dict[str, Any]]


def make_recall(memory: Memory, writer: MemoryWriter | None, *, reads_window: bool = True) -> NodeFn:
    """Recall: search the memory for the latest user message (memories and graph relations). `reads_window`:
    the chat model reads the conversation's recent messages, not only the recalled memories."""

    def recall(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        if writer is not None:
            # The exchanges still being memorized are the latest ones, and the respond prompt shows them in its
            # window: waiting for their extraction (seconds on a real model) would put it in the chat's latency.
            # Recall waits only for those the window no longer shows, so nothing said is out of both.
            # (`Context.wait_for_writes` asks for all of them.)
            waits_for_all = runtime.context.wait_for_writes or not reads_window
            shown = 0 if waits_for_all else exchanges_in_window(runtime.context.history_messages)
            writer.wait(timeout=120, pending_at_most=shown)
        query = _latest_user_text(state)
        try:
            found = memory.search(query, user_id=runtime.context.user_id, limit=runtime.context.recall_limit,
                                  threshold=runtime.context.recall_min_score)
        except MemoryLayerError as exc:
            log.warning("recall failed: %s", one_line(exc))
            found = {"results": [], "relations": []}
        return {"recalled": found["results"], "relations": found["relations"]}

    return recall


def make_respond(model: BaseChatModel) -> NodeFn:
    """Respond: the chat model answers, with the recalled memories quoted in the system prompt."""

    def respond(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        system = SystemMessage(system_prompt(state.get("recalled", []), state.get("relations", [])))
        recent = _recent(state["messages"], runtime.context.history_messages)
        try:
            reply = model.invoke([system, *recent])
        except Exception as exc:  # any endpoint fault becomes one line in the chat; the session goes on
            return {"messages": [AIMessage(f"⚠ The language model failed: {one_line(exc)}",
                                           additional_kwargs={"error": True})], "reply_failed": True}
        return {"messages": [AIMessage(content=reply.content, id=reply.id)], "reply_failed": False}

    return respond


def make_memorize(writer: MemoryWriter, infer: bool) -> NodeFn:
    """Memorize: hand the exchange to the background writer (off the reply path), and let the session's state
    drop the messages no later prompt will show (`history_messages`): long-term memory keeps what they said.

    Without the trim, every turn of a long session cost more than the last: LangGraph's message reducer and
    checkpointer copy the whole list each step (measured: 9 ms a turn at the start, 43 ms after 350 turns)."""

    def memorize(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        forget = [RemoveMessage(id=m.id) for m in _before_window(state["messages"], runtime.context.history_messages)
                  if m.id]
        update: dict[str, Any] = {"messages": forget} if forget else {}
        text = _latest_user_text(state)
        if not infer and text.rstrip().endswith(("?", "？")):
            return update  # offline, words are stored as said: a question states no fact worth keeping
        messages = [{"role": "user", "content": text}]
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and not state.get("reply_failed"):
            messages.append({"role": "assistant", "content": str(last.content)})
        writer.submit(Exchange(user_id=runtime.context.user_id, messages=messages, infer=infer))
        return update

    return memorize


def system_prompt(recalled: list[dict[str, Any]], relations: list[dict[str, Any]]) -> str:
    """The respond prompt: memories and relations quoted as data (JSON strings), never as instructions."""
    lines = []
    for memory in recalled:
        when = (memory.get("event_time") or memory.get("updated_at") or "")[:10]
        lines.append(f"- {quote(memory['memory'])}" + (f" ({when})" if when else ""))
    for relation in relations:
        triple = f"{relation['source']} -{relation['relationship']}-> {relation['destination']}"
        lines.append(f"- {quote(triple)} (graph)")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    return load("respond").format(today=today, memories="\n".join(lines) or "(nothing recalled)")


def quote(text: str) -> str:
    """A remembered text as one JSON string line, with "<" escaped (\\u003c): a line break cannot end the note,
    and a note holding "</memories>" cannot close the memory block early (or open another)."""
    return json.dumps(text, ensure_ascii=False).replace("<", "\\u003c")


def _latest_user_text(state: State) -> str:
    for message in reversed(state["messages"]):
        if isinstance(message, HumanMessage):
            return str(message.content)
    return ""


def exchanges_in_window(limit: int) -> int:
    """The past exchanges (a user message and the reply) that a prompt showing the last `limit` messages, the new
    user message included, shows whole (`_recent`); an exchange whose reply failed takes one message, not two."""
    return max(0, (limit - 1) // 2)


def _before_window(messages: list[BaseMessage], limit: int) -> list[BaseMessage]:
    """The messages before the last `limit` that are not error notices: the next turn's prompt, which adds one
    message and shows the last `limit` (`_recent`), can never reach them."""
    kept = 0
    for index in range(len(messages) - 1, -1, -1):
        if not messages[index].additional_kwargs.get("error"):
            kept += 1
            if kept == limit:
                return messages[:index]
    return []


def _recent(messages: list[BaseMessage], limit: int) -> list[BaseMessage]:
    """The last `limit` messages, starting at a user message, without earlier error notices."""
    kept = [m for m in messages if not m.additional_kwargs.get("error")][-limit:]
    while kept and not isinstance(kept[0], HumanMessage):
        kept.pop(0)
    return kept
