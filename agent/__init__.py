"""A LangGraph chat agent that remembers each user across sessions (recall -> respond -> memorize)."""

from agent.graph import build_graph

__all__ = ["build_graph"]
