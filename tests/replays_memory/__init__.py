"""Scripted model answers for the memory tests, a scripted model that reads its prompt, and fresh stores.

The replays (`practice2_en.json`, `practice2_zh.json`) are the seeds' Practice 2 facts for user alice123,
each with the answer a model following `prompts/extract.md` would give. An answer that refers to an existing
memory or relation names it by its text, as `"#memory:<text>"` or `"#relation:<source -rel-> destination>"`;
`PromptReadingModel` turns that into the integer id the prompt shows, like a model reading the prompt would,
and fails loudly when the prompt did not show it. Everything else of the answer goes, as text, through the
same parsing code as a real model's answer.

`fresh_memory` opens a `Memory` on real, empty stores: a copy of one empty data directory made by `Memory`
itself at the first call (creating a Milvus collection costs about a second, mostly pymilvus waiting for
its indexes; copying the result costs a few milliseconds).
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from conftest import ScriptedModel, make_memory
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from memory import Memory

HERE = Path(__file__).parent
_MARKER = re.compile(r'"#(memory|relation):((?:[^"\\]|\\.)*)"')
_EMPTY_STORE: list[Path] = []


def fresh_memory(data_dir: Path, llm: BaseChatModel | None = None) -> Memory:
    """A `Memory` (as `conftest.make_memory` builds it) on a copy of an empty data directory at `data_dir`."""
    if not _EMPTY_STORE:
        parent = Path(tempfile.mkdtemp(prefix="empty-memory-store-"))
        atexit.register(shutil.rmtree, parent, ignore_errors=True)
        make_memory(parent / "data").close()
        _EMPTY_STORE.append(parent / "data")
    shutil.copytree(_EMPTY_STORE[0], data_dir)
    return make_memory(data_dir, llm)


def load_replay(name: str) -> list[dict[str, Any]]:
    """The steps of a replay file: `[{"say": <user message>, "answer": <model answer as JSON data>}, ...]`."""
    return json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))


def answer(memories: list[dict[str, Any]] | None = None, entities: dict[str, str] | None = None,
           invalidated: list[int | str] | None = None) -> str:
    """An extraction answer as the model's text; `entities` maps each name to its type."""
    return json.dumps({"memories": memories or [],
                       "entities": [{"name": n, "type": t} for n, t in (entities or {}).items()],
                       "invalidated_relations": [relation_ref(r) for r in invalidated or []]}, ensure_ascii=False)


def add_op(text: str, *relations: tuple[str, str, str]) -> dict[str, Any]:
    """An ADD decision stating these (source, relationship, destination) relations."""
    return {"event": "ADD", "text": text, "relations": [_relation(*r) for r in relations]}


def update_op(memory: int | str, text: str, *relations: tuple[str, str, str]) -> dict[str, Any]:
    """An UPDATE decision; `memory` is the shown id, or the shown text (resolved by `PromptReadingModel`)."""
    return {"event": "UPDATE", "id": _ref("memory", memory), "text": text,
            "relations": [_relation(*r) for r in relations]}


def delete_op(memory: int | str) -> dict[str, Any]:
    """A DELETE decision; `memory` is the shown id, or the shown text."""
    return {"event": "DELETE", "id": _ref("memory", memory)}


def relation_ref(relation: int | str) -> int | str:
    """An invalidated relation: the shown id, or the shown line ("USER -likes-> badminton")."""
    return _ref("relation", relation)


def _ref(kind: str, value: int | str) -> int | str:
    return value if isinstance(value, int) else f"#{kind}:{value}"


def _relation(source: str, relationship: str, destination: str) -> dict[str, str]:
    return {"source": source, "relationship": relationship, "destination": destination}


def shown_items(prompt: str, section: str) -> dict[str, int]:
    """The numbered lines of one section of the extraction prompt ("MEMORIES" or "RELATIONS"): text -> id."""
    match = re.search(rf"EXISTING {section} \(id: [^)]*\):\n(.*?)(?:\n\n|\Z)", prompt, re.DOTALL)
    if not match:
        raise AssertionError(f"the prompt has no EXISTING {section} section")
    items = {}
    for line in match.group(1).splitlines():
        number, sep, text = line.partition(": ")
        if sep and number.isdigit():
            items[text] = int(number)
    return items


class PromptReadingModel(ScriptedModel):
    """A `ScriptedModel` whose answers may name shown memories and relations by text instead of by id."""

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        if not self.replies:
            raise RuntimeError("the scripted model has no reply left")
        prompt = str(messages[0].content)
        reply = _MARKER.sub(lambda m: str(_lookup(prompt, m.group(1), json.loads(f'"{m.group(2)}"'))),
                            self.replies.pop(0))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


def _lookup(prompt: str, kind: str, text: str) -> int:
    items = shown_items(prompt, "MEMORIES" if kind == "memory" else "RELATIONS")
    if text not in items:
        raise AssertionError(f"the prompt does not show the {kind} {text!r}; it shows {sorted(items)}")
    return items[text]


def reading_model(*replies: str) -> PromptReadingModel:
    """A fresh prompt-reading model with these answers queued."""
    return PromptReadingModel(replies=list(replies), calls=[])
