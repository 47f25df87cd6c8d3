"""Putting the agent together from the environment (and `.env`): memory, chat model, writer, graph.

Reading the configuration is light; the agent's heavy parts (LangGraph, LangChain, the memory engines) are
imported by `build_runtime` only, so the chat can read its settings and greet the user while they load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import load_dotenv

from memory.config import DEFAULT_CHAT_MODEL, LLMConfig, MemoryConfig

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langgraph.graph.state import CompiledStateGraph

    from agent.writer import MemoryWriter
    from memory import Memory

OFFLINE_NOTICE = ("No language model is configured, so replies are offline: I remember what you say and answer "
                  "with what I recall. Set OPENAI_API_KEY (and OPENAI_BASE_URL, LLM_MODEL) in .env for real replies.")


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


def load_config(data_dir: str | None = None) -> MemoryConfig:
    """The memory configuration from the environment and `.env` (`data_dir` overrides MEMORY_DATA_DIR)."""
    load_env()
    config = MemoryConfig.from_env()
    if data_dir:
        config.data_dir = data_dir
    return config


def build_runtime(*, data_dir: str | None = None, chat_model: str | None = None,
                  on_error: Callable[[str], None] | None = None, config: MemoryConfig | None = None) -> AgentRuntime:
    """Build the memory, the chat model (offline without an API key), the writer and the graph, from `config`
    or else from the environment."""
    from agent.graph import build_graph
    from agent.offline import OfflineChatModel
    from agent.writer import MemoryWriter
    from memory import Memory
    from memory.llm import make_chat_model

    config = config or load_config(data_dir)
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
