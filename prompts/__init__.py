"""Prompt texts (Markdown files beside this module), each paired with the typed shape of its answer."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent


@lru_cache
def load(name: str) -> str:
    """The text of `prompts/<name>.md`."""
    return (_HERE / f"{name}.md").read_text(encoding="utf-8")
