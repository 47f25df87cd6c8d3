"""Memory writes off the reply path: a background worker that memorizes each exchange after the reply.

The user sees the reply before extraction finishes, and the next turn does not wait for it while the prompt's
window still shows the exchanges being written (`wait(pending_at_most=...)`). `drain_verbatim` saves pending writes
without the model when the user insists on quitting.
When the model cannot extract (no model, endpoint down, invalid answers), the user's own words are stored
verbatim instead, so nothing the user said is lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memory import LLMError, LLMNotConfiguredError, Memory, MemoryLayerError
from memory.errors import one_line

# A write starts this long after its exchange was queued. The turn that queued it still has its own bookkeeping to
# finish (LangGraph's step writes and the session's checkpoint), and a write started at once took the GIL and a core
# from it. Measured at 10,000 memories, turns interleaved: p50 / p95 37.7 / 52.7 -> 34.0 / 41.4 ms with the USE
# embedder; with e5 no difference (44.4 / 54.9 -> 42.9 / 55.8). A user's next message comes seconds later.
WRITE_DELAY_S = 0.05


@dataclass
class Exchange:
    """One turn to memorize."""

    user_id: str
    messages: list[dict[str, str]]
    infer: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    queued_at: float = field(default_factory=time.monotonic)


class MemoryWriter:
    """One worker thread that applies `Memory.add` to queued exchanges in order."""

    def __init__(self, memory: Memory, on_error: Callable[[str], None] | None = None) -> None:
        self.memory = memory
        self.on_error = on_error or (lambda message: None)
        self._cond = threading.Condition()
        self._queue: deque[Exchange] = deque()
        self._pending = 0
        self._current: Exchange | None = None
        self._sealed = False  # no new exchanges (the session is ending)
        self._stopped = False  # drained: the worker stops and the outcome of its write in flight is ignored
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="memory-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Exchanges queued or being written."""
        return self._pending

    def submit(self, exchange: Exchange) -> bool:
        """Queue an exchange; returns at once. False (and nothing queued) once the writer is sealed."""
        with self._cond:
            if self._sealed or self._stopped:
                return False
            self._queue.append(exchange)
            self._pending += 1
            self._cond.notify_all()
        return True

    def seal(self) -> None:
        """Accept no new exchange; those already queued are still written."""
        with self._cond:
            self._sealed = True

    def wait(self, timeout: float | None = None, *, pending_at_most: int = 0) -> bool:
        """Block until at most `pending_at_most` exchanges (the latest ones: they are written in order) are still
        queued or being written, by default none; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending <= pending_at_most, timeout)

    def drain_verbatim(self) -> int:
        """Store what is still queued verbatim (no model call) — the fast path when the user insists on
        quitting. The write in flight (perhaps waiting on the model) is stored verbatim too, and whatever it
        does later is ignored. Returns how many exchanges were saved this way."""
        with self._cond:
            self._stopped = True
            taken = ([self._current] if self._current is not None else []) + list(self._queue)
            self._queue.clear()
            self._current = None
            self._cond.notify_all()
        saved = sum(self._store_verbatim(exchange, "interrupted", report=True) for exchange in taken)
        with self._cond:
            self._pending = 0
            self._cond.notify_all()
        return saved

    def close(self) -> None:
        """Stop the worker after the queued exchanges."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing or self._stopped)
                delay = self._queue[0].queued_at + WRITE_DELAY_S - time.monotonic() if self._queue else 0.0
                if delay > 0:  # see WRITE_DELAY_S; a drain ends the wait
                    self._cond.wait_for(lambda: self._stopped, delay)
                if self._stopped or not self._queue:
                    return
                exchange = self._queue.popleft()
                self._current = exchange
            try:
                self._write(exchange)
            except Exception as exc:  # never let the worker die silently with a traceback
                self._report(f"could not memorize this turn: {one_line(exc)}")
            finally:
                with self._cond:
                    if not self._stopped:
                        self._current = None
                        self._pending -= 1
                    self._cond.notify_all()

    def _report(self, message: str) -> None:
        if not self._stopped:  # after a drain, the session has ended: nothing more is said
            self.on_error(message)

    def _write(self, exchange: Exchange) -> None:
        if exchange.infer:
            try:
                self.memory.add(exchange.messages, user_id=exchange.user_id, metadata=exchange.metadata)
                return
            except LLMNotConfiguredError:
                pass
            except LLMError as exc:
                self._report(f"memory extraction failed ({one_line(exc)}); your message was stored verbatim")
            except MemoryLayerError as exc:
                self._report(f"could not memorize this turn: {one_line(exc)}")
                return
            if self._stopped:
                return  # the drain stored it verbatim already
        self._store_verbatim(exchange, "verbatim")

    def _store_verbatim(self, exchange: Exchange, source: str, report: bool = False) -> bool:
        user_turns = [m for m in exchange.messages if m.get("role") == "user"]
        try:
            self.memory.add(user_turns, user_id=exchange.user_id, infer=False,
                            metadata={"source": source, **exchange.metadata})  # an exchange's own source wins
            return True
        except MemoryLayerError as exc:
            message = f"could not memorize this turn: {one_line(exc)}"
            if report:
                self.on_error(message)
            else:
                self._report(message)
            return False
