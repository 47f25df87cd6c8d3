"""Answering a question from recalled memories, and grading the answer with an LLM judge (the LOCOMO "J" score
of the Mem0 paper: CORRECT/WRONG against the gold answer).

Two prompts: `answer.md` (the memories, each with its date, then the question; the answer is a short plain
text) and `judge.md` (question, gold answer, generated answer; the answer is a `Verdict` JSON object). Both are
asked through `memory.llm.ask_structured`, and the verdict is read by `prompts.extract.json_answer`, the same
code that reads extraction answers, so a broken answer is retried once with the error shown to the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from prompts import load
from prompts.extract import json_answer

MAX_ANSWER_CHARS = 500
_ANSWER_PREFIX = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*", re.IGNORECASE)


class Verdict(BaseModel):
    """The judge's answer: a short reason, then CORRECT or WRONG."""

    reasoning: str = Field(default="", max_length=2000)
    label: Literal["CORRECT", "WRONG"]

    @field_validator("label", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        """Read the label case-insensitively ("correct" is CORRECT); anything else is left to the schema."""
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def correct(self) -> bool:
        """Whether the answer was judged CORRECT."""
        return self.label == "CORRECT"


def memory_context(memories: Iterable[tuple[str, str]]) -> str:
    """Recalled memories as the answer prompt shows them: one line "[<date>] <text>" per (date, text)."""
    return "\n".join(f"[{date}] {' '.join(text.split())}" for date, text in memories) or "(none)"


def answer_prompt(context: str) -> str:
    """The answering instructions with the recalled memories (see `memory_context`)."""
    return load("answer").format(memories=context)


def answer_request(question: str) -> str:
    """The user message of the answering call."""
    return f"QUESTION: {question}"


def parse_answer(raw: str) -> str:
    """The model's answer as one line of text (an "Answer:" prefix and wrapping quotes dropped); raise
    ValueError when it is empty."""
    text = " ".join(_ANSWER_PREFIX.sub("", raw.strip()).split()).strip("\"'` ")
    if not text:
        raise ValueError("the answer is empty; answer with a short phrase")
    return text[:MAX_ANSWER_CHARS]


def judge_prompt() -> str:
    """The judging instructions."""
    return load("judge").format()


def judge_request(question: str, gold: str, answer: str) -> str:
    """The user message of the judging call."""
    return f"Question: {question}\nGold answer: {gold}\nGenerated answer: {answer}"


def parse_verdict(raw: str) -> Verdict:
    """The judge's text as a `Verdict`; raise ValueError with a message fit to show the model."""
    return json_answer(raw, Verdict)
