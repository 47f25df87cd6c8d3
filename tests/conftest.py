"""Shared fixtures: real Milvus Lite and Kuzu in temporary directories, and a scripted LLM.

The only scripted part is the language model: `ScriptedModel` is a LangChain chat model whose answers are
written in the test, and whose text goes through the same parsing code as a real model's. `FakeOpenAI`
(tests/fake_openai.py) is the same idea over real HTTP for end-to-end tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

sys.path.insert(0, str(Path(__file__).parent))

from memory import Memory, MemoryConfig


class ScriptedModel(BaseChatModel):
    """A chat model that answers from a queue of scripted texts and records every prompt it was sent."""

    replies: list[str] = Field(default_factory=list)
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def push(self, *replies: str) -> None:
        """Queue answers."""
        self.replies.extend(replies)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        if not self.replies:
            raise RuntimeError("the scripted model has no reply left")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.replies.pop(0)))])


def scripted(*replies: str) -> ScriptedModel:
    """A fresh scripted model with these answers queued."""
    return ScriptedModel(replies=list(replies), calls=[])


def make_memory(data_dir: Path, llm: BaseChatModel | None = None, **config: Any) -> Memory:
    """A Memory on real embedded stores under `data_dir`, environment ignored."""
    cfg = MemoryConfig.from_env({}) if not config else MemoryConfig.from_dict(config, env={})
    cfg.data_dir = str(data_dir)
    return Memory(cfg, llm=llm)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data directory."""
    return tmp_path / "data"


@pytest.fixture
def model() -> ScriptedModel:
    """A scripted model with an empty queue."""
    return scripted()


@pytest.fixture
def mem(data_dir: Path, model: ScriptedModel) -> Iterator[Memory]:
    """A Memory on fresh embedded stores, with the scripted model as its LLM."""
    memory = make_memory(data_dir, model)
    yield memory
    memory.close()
