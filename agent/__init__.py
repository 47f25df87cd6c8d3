"""A LangGraph chat agent that remembers each user across sessions (recall -> respond -> memorize).

`build_graph` is imported on first use, so `python -m agent` can show its prompt before LangGraph and the memory
engines have loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.graph import build_graph

__all__ = ["build_graph"]


def __getattr__(name: str) -> Any:
    """`build_graph`, imported when first asked for."""
    if name == "build_graph":
        from agent.graph import build_graph

        return build_graph
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
