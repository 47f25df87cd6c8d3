"""Long-term, per-user memory for AI agents: facts in Milvus, entities and relations in Kuzu.

    from memory import Memory
    mem = Memory()                                   # embedded defaults, works offline
    mem.add("I like hiking", user_id="alice")
    mem.search("what do I like?", user_id="alice")
"""

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
from memory.memory import Memory
from memory.search import SearchRecipe

__all__ = ["ConfigError", "ExtractionError", "InputError", "LLMError", "LLMNotConfiguredError", "Memory",
           "MemoryConfig", "MemoryLayerError", "NotFoundError", "SearchRecipe", "StoreBusyError", "StoreError"]
