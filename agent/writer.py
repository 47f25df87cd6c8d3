"""Memory writes off the reply path: a background worker that memorizes each exchange after the reply.

The user sees the reply before extraction finishes. `wait` lets the next turn's recall see what the previous
turn stored, and `drain` finishes pending writes before the program exits. When the model cannot extract
(no model, endpoint down, invalid answers), the user's own words are stored verbatim instead, so nothing the
user said is lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memory import LLMError, LLMNotConfiguredError, Memory, MemoryLayerError
from memory.errors import one_line


@dataclass
class Exchange:
    """One turn to memorize."""

    user_id: str
    messages: list[dict[str, str]]
    infer: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


class MemoryWriter:
    """One worker thread that applies `Memory.add` to queued exchanges in order."""

    def __init__(self, memory: Memory, on_error: Callable[[str], None] | None = None) -> None:
        self.memory = memory
        self.on_error = on_error or (lambda message: None)
        self._queue: queue.Queue[Exchange | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._current: Exchange | None = None
        self._thread = threading.Thread(target=self._run, name="memory-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Exchanges queued or being written."""
        return self._pending

    def submit(self, exchange: Exchange) -> None:
        """Queue an exchange; returns at once."""
        with self._idle:
            self._pending += 1
        self._queue.put(exchange)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued exchange is written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def drain_verbatim(self) -> int:
        """Store what is still queued verbatim (no model call) — the fast path when the user insists on
        quitting. Returns how many exchanges were saved this way."""
        saved = 0
        current, self._current = self._current, None
        if current is not None:  # the write in flight may never finish: keep the user's words now
            self._store_verbatim(current, "interrupted")
            saved += 1
        while True:
            try:
                exchange = self._queue.get_nowait()
            except queue.Empty:
                return saved
            if exchange is not None:
                self._store_verbatim(exchange, "interrupted")
                saved += 1
                self._done()

    def close(self) -> None:
        """Stop the worker after the queued exchanges."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while (exchange := self._queue.get()) is not None:
            self._current = exchange
            try:
                self._write(exchange)
            finally:
                self._current = None
                self._done()

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _write(self, exchange: Exchange) -> None:
        if exchange.infer:
            try:
                self.memory.add(exchange.messages, user_id=exchange.user_id, metadata=exchange.metadata)
                return
            except LLMNotConfiguredError:
                pass
            except LLMError as exc:
                self.on_error(f"memory extraction failed ({one_line(exc)}); your message was stored verbatim")
            except MemoryLayerError as exc:
                self.on_error(f"could not memorize this turn: {one_line(exc)}")
                return
        self._store_verbatim(exchange, "verbatim")

    def _store_verbatim(self, exchange: Exchange, source: str) -> None:
        user_turns = [m for m in exchange.messages if m.get("role") == "user"]
        try:
            self.memory.add(user_turns, user_id=exchange.user_id, infer=False,
                            metadata={**exchange.metadata, "source": source})
        except MemoryLayerError as exc:
            self.on_error(f"could not memorize this turn: {one_line(exc)}")
