"""The extraction prompt and the typed shape of its answer: one LLM call decides memories, entities and
relations for one `Memory.add`.

The conversation is shown to the model with its messages numbered (`conversation`: "[1] user: ..."), and each
memory of the answer names the messages it comes from in `sources`; `Memory` maps those numbers to the
messages' ids (provenance). `json_answer` is the one way a model's JSON answer is read and validated against a
pydantic model; other prompts (`prompts.judge`) use it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from prompts import load

M = TypeVar("M", bound=BaseModel)
_SOURCE_NUMBER = re.compile(r"^\s*\[?\s*(\d{1,9})\s*\]?\s*$")


class RelationOut(BaseModel):
    """A relation stated by a memory: `source -relationship-> destination` (USER is the user)."""

    source: str = Field(min_length=1, max_length=200)
    relationship: str = Field(min_length=1, max_length=100)
    destination: str = Field(min_length=1, max_length=200)


class MemoryOp(BaseModel):
    """One decision about a memory."""

    event: Literal["ADD", "UPDATE", "DELETE"]
    id: int | None = None
    text: str | None = Field(default=None, max_length=2000)
    relations: list[RelationOut] = Field(default_factory=list)
    sources: list[int] = Field(default_factory=list)  # the numbers of the messages the memory comes from

    @field_validator("sources", mode="before")
    @classmethod
    def _lenient_sources(cls, value: Any) -> list[int]:
        """Provenance never fails an answer: one number becomes a list, "[3]" or "3" is read as 3, anything else
        (null, words, negative or fractional numbers) is dropped. Out-of-range numbers are dropped later."""
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        numbers = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                numbers.append(item)
            elif isinstance(item, str) and (match := _SOURCE_NUMBER.match(item)):
                numbers.append(int(match.group(1)))
        return [n for n in numbers if n >= 1]

    @model_validator(mode="after")
    def _complete(self) -> MemoryOp:
        if self.event in ("UPDATE", "DELETE") and self.id is None:
            raise ValueError(f"{self.event} needs the integer id of an existing memory")
        if self.event in ("ADD", "UPDATE") and not (self.text or "").strip():
            raise ValueError(f"{self.event} needs a non-empty text")
        return self


class EntityOut(BaseModel):
    """An entity named in the relations, with its type."""

    name: str = Field(min_length=1, max_length=200)
    type: str = Field(default="thing", max_length=50)


class ExtractionResult(BaseModel):
    """The model's whole answer."""

    memories: list[MemoryOp] = Field(default_factory=list)
    entities: list[EntityOut] = Field(default_factory=list)
    invalidated_relations: list[int] = Field(default_factory=list)

    def check_ids(self, memory_ids: int, relation_ids: int) -> None:
        """Raise ValueError when an id is not one of those shown to the model."""
        for op in self.memories:
            if op.id is not None and op.event != "ADD" and not 0 <= op.id < memory_ids:
                raise ValueError(f"memory id {op.id} does not exist (valid ids: 0..{memory_ids - 1})"
                                 if memory_ids else f"memory id {op.id} does not exist (there are no memories)")
        for rel in self.invalidated_relations:
            if not 0 <= rel < relation_ids:
                raise ValueError(f"relation id {rel} does not exist")


def conversation(messages: Sequence[Mapping[str, str]]) -> str:
    """The NEW CONVERSATION as the model sees it: one line per message, "[<number>] <role>: <content>".

    Each message is a mapping with "role" and "content", and "number" (its 1-based position in what the caller
    passed; defaults to its position here). The numbers are what the answer's `sources` refer to."""
    return "\n".join(f"[{m.get('number') or i}] {m['role']}: {m['content']}" for i, m in enumerate(messages, 1))


def render(today: str, memories: list[str], relations: list[str]) -> str:
    """The extraction prompt with today's date and the numbered existing memories and relations."""
    listed_memories = "\n".join(f"{i}: {m}" for i, m in enumerate(memories)) or "(none)"
    listed_relations = "\n".join(f"{i}: {r}" for i, r in enumerate(relations)) or "(none)"
    return load("extract").format(today=today, memories=listed_memories, relations=listed_relations)


def json_answer(raw: str, shape: type[M]) -> M:
    """A model's text as a validated `shape`: the JSON object in it (a ```json fence or the outermost braces,
    prose around it ignored). Raise ValueError with a message fit to show the model."""
    text = raw.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the answer contains no JSON object")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the JSON does not parse: {exc}") from None
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"the JSON does not match the schema: {problems}") from None


def parse(raw: str, memory_ids: int, relation_ids: int) -> ExtractionResult:
    """Parse and validate the model's text; raise ValueError with a message fit to show the model.

    An answer without `sources` is valid (each memory then names no source message)."""
    result = json_answer(raw, ExtractionResult)
    result.check_ids(memory_ids, relation_ids)
    return result
