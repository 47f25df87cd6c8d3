"""Milvus filter expressions built so that no user id or metadata value can change their meaning.

Values become string literals with every quote and backslash escaped; control characters (which Milvus'
expression parser cannot escape) and keys that are not plain identifiers are refused with `InputError`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from memory.errors import InputError
from memory.records import EXPIRY_KEY

MAX_ID_CHARS = 256
# Up to this many values, `any_of` writes `==` alternatives rather than an `in` list.
FEW_VALUES = 4
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_id(value: str | None, name: str, required: bool = False) -> str:
    """Validate a user/agent/run id and return it ("" for a missing optional id): a string of valid Unicode, not
    blank, at most `MAX_ID_CHARS` characters, without control characters."""
    if value is None or value == "":
        if required:
            raise InputError(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{name} must not be blank")
    if len(value) > MAX_ID_CHARS:
        raise InputError(f"{name} is {len(value)} characters long; the limit is {MAX_ID_CHARS}")
    if _CONTROL.search(value) or "\n" in value or "\r" in value or "\t" in value:
        raise InputError(f"{name} must not contain control characters or line breaks")
    check_encodable(value, name)  # e.g. undecodable bytes in a command-line argument
    return value


def check_encodable(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (lone surrogates cannot be stored or sent anywhere)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None


def literal(value: Any) -> str:
    """A Milvus expression literal for a string, number or boolean value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise InputError("filter values must not contain control characters")
        return json.dumps(value, ensure_ascii=False)
    raise InputError(f"filter values must be strings, numbers or booleans, not {type(value).__name__}")


def scope_filter(user_id: str, agent_id: str = "", run_id: str = "") -> str:
    """The expression selecting one user's memories, optionally narrowed to an agent and a run."""
    parts = [f"user_id == {literal(user_id)}"]
    if agent_id:
        parts.append(f"agent_id == {literal(agent_id)}")
    if run_id:
        parts.append(f"run_id == {literal(run_id)}")
    return " and ".join(parts)


def metadata_filter(filters: dict[str, Any] | None) -> str:
    """Equality (or `{"in": [...]}`) conditions on metadata keys, joined with `and`."""
    if not filters:
        return ""
    if not isinstance(filters, dict):
        raise InputError("filters must be a dict of metadata key -> value")
    parts = []
    for key, value in filters.items():
        if key in {"agent_id", "run_id", "user_id"}:
            continue  # handled by scope_filter
        if not isinstance(key, str) or not _KEY.match(key):
            raise InputError(f"filter key {key!r} must be a plain identifier (letters, digits, _)")
        field = f'metadata["{key}"]'
        if isinstance(value, dict) and set(value) == {"in"} and isinstance(value["in"], list):
            parts.append(any_of(field, value["in"]))
        else:
            parts.append(f"{field} == {literal(value)}")
    return " and ".join(parts)


def any_of(field: str, values: list[Any]) -> str:
    """`field` equal to one of `values` ("false" for none). Up to `FEW_VALUES` values as `==` alternatives, which
    Milvus Lite 2.5 answers faster than `in` (one or three of 100,000 VARCHAR rows: 5-7 against 9-12 ms); more as
    `in` lists, one per kind of literal: a long chain of `or` is refused by Lite ("unsupported expr proto node",
    from ~16 terms), and so is an `in` list that mixes strings and numbers, or ints and floats, on a JSON path."""
    if len(values) <= FEW_VALUES:
        options = " or ".join(f"{field} == {literal(v)}" for v in values)
        return f"({options})" if options else "false"
    kinds: dict[type, list[str]] = {}
    for value in values:
        kinds.setdefault(type(value), []).append(literal(value))
    return "(" + " or ".join(f"{field} in [{', '.join(group)}]" for group in kinds.values()) + ")"


def combine(*expressions: str) -> str:
    """Join non-empty expressions with `and`, each in parentheses."""
    present = [e for e in expressions if e]
    return " and ".join(f"({e})" for e in present)


def expiring() -> str:
    """Rows that have an expiration date (a number at `metadata["expires_at"]`)."""
    return f'metadata["{EXPIRY_KEY}"] >= 0'
