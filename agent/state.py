"""The graph state: the session's messages and what was recalled for the latest one."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class State(TypedDict, total=False):
    """Messages accumulate over the session; `recalled`/`relations` are replaced every turn."""

    messages: Annotated[list[AnyMessage], add_messages]
    recalled: list[dict[str, Any]]
    relations: list[dict[str, Any]]
    reply_failed: bool
