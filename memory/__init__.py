"""Long-term, per-user memory for AI agents: facts in Milvus, entities and relations in Kuzu.

    from memory import Memory
    mem = Memory()                                   # embedded defaults, works offline
    mem.add("I like hiking", user_id="alice")
    mem.search("what do I like?", user_id="alice")

`Memory` and `SearchRecipe` are imported on first use: the package's errors and configuration load in a few
milliseconds, without the engines (pymilvus, kuzu, the embedder), so a program can start before it opens them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory.config import MemoryConfig
from memory.errors import (
    ConfigError,
    ExtractionError,
    InputError,
    LLMError,
    LLMNotConfiguredError,
    MemoryLayerError,
    NotFoundError,
    StoreBusyError,
    StoreError,
)

if TYPE_CHECKING:
    from memory.memory import Memory
    from memory.search import SearchRecipe

__all__ = ["ConfigError", "ExtractionError", "InputError", "LLMError", "LLMNotConfiguredError", "Memory",
           "MemoryConfig", "MemoryLayerError", "NotFoundError", "SearchRecipe", "StoreBusyError", "StoreError"]


def __getattr__(name: str) -> Any:
    """`Memory` and `SearchRecipe`, imported when first asked for."""
    if name == "Memory":
        from memory.memory import Memory

        return Memory
    if name == "SearchRecipe":
        from memory.search import SearchRecipe

        return SearchRecipe
    raise AttributeError(f"module 'memory' has no attribute {name!r}")
