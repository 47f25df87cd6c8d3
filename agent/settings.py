"""Putting the agent together from the environment (and `.env`): memory, chat model, writer, graph."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dotenv import load_dotenv
from langchain_core.language_models import BaseChatModel
from langgraph.graph.state import CompiledStateGraph

from agent.graph import build_graph
from agent.offline import OfflineChatModel
from agent.writer import MemoryWriter
from memory import Memory, MemoryConfig
from memory.config import DEFAULT_CHAT_MODEL, LLMConfig
from memory.llm import make_chat_model


@dataclass
class AgentRuntime:
    """Everything a chat session needs."""

    memory: Memory
    model: BaseChatModel
    writer: MemoryWriter
    graph: CompiledStateGraph
    offline: bool

    def close(self) -> None:
        """Finish pending writes and close the stores."""
        self.writer.wait()
        self.writer.close()
        self.memory.close()


def load_env(env_file: str | None = None) -> None:
    """Read `.env` (or the given file) into the environment; variables already set win."""
    path = Path(env_file) if env_file else Path.cwd() / ".env"
    if path.is_file():
        load_dotenv(path, override=False)


def build_runtime(*, data_dir: str | None = None, chat_model: str | None = None,
                  on_error: Callable[[str], None] | None = None) -> AgentRuntime:
    """Build the memory, the chat model (offline without an API key), the writer and the graph."""
    load_env()
    config = MemoryConfig.from_env()
    if data_dir:
        config.data_dir = data_dir
    memory = Memory(config)
    try:
        offline = config.llm is None
        if offline:
            model: BaseChatModel = OfflineChatModel()
        else:
            chat = LLMConfig(**{**config.llm.__dict__, "model": chat_model or os.environ.get("LLM_MODEL")
                                or DEFAULT_CHAT_MODEL, "temperature": 0.3})
            model = make_chat_model(chat, streaming=True)
        writer = MemoryWriter(memory, on_error)
        graph = build_graph(memory, model, writer, infer=not offline)
    except BaseException:
        memory.close()
        raise
    return AgentRuntime(memory=memory, model=model, writer=writer, graph=graph, offline=offline)
