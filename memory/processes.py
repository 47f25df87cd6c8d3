"""Child processes of the memory layer, started so that a Ctrl-C typed at the chat does not reach them.

A child shares the chat's process group: a Ctrl-C in the terminal would stop it at once, before the chat could
finish what the child was doing for it (the Milvus Lite engine holding the data, a graph rewrite half-way). A
signal mask is inherited across fork and exec, and Python leaves a blocked SIGINT blocked, so a child started
inside `sigint_blocked()` never sees the Ctrl-C; the chat finishes its work and stops the child itself.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the calling thread for the block (children started inside inherit the blocked mask)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if signal.SIGINT not in blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
