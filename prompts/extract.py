"""The extraction prompt and the typed shape of its answer: one LLM call decides memories, entities and
relations for one `Memory.add`."""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from prompts import load


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


def render(today: str, memories: list[str], relations: list[str]) -> str:
    """The extraction prompt with today's date and the numbered existing memories and relations."""
    listed_memories = "\n".join(f"{i}: {m}" for i, m in enumerate(memories)) or "(none)"
    listed_relations = "\n".join(f"{i}: {r}" for i, r in enumerate(relations)) or "(none)"
    return load("extract").format(today=today, memories=listed_memories, relations=listed_relations)


def parse(raw: str, memory_ids: int, relation_ids: int) -> ExtractionResult:
    """Parse and validate the model's text; raise ValueError with a message fit to show the model."""
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
        result = ExtractionResult.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"the JSON does not match the schema: {problems}") from None
    result.check_ids(memory_ids, relation_ids)
    return result
