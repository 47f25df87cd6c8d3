"""Reading the user's line at the terminal so that a Ctrl-C ends the wait whenever it comes.

Python's SIGINT handler only notes the signal; the interpreter raises KeyboardInterrupt when it next looks. A
Ctrl-C that lands after its last look and before `input()` blocks on the terminal, or that the kernel hands to
another thread of the process, leaves `input()` waiting until the user presses Enter. A test pressing Ctrl-C
as the chat's first prompt showed failed so about once in 10-30 runs on a 2-core VM (rich prints and flushes the
prompt, then calls `input()`; a script doing just that missed 4 of 200 such Ctrl-Cs, and none with the wait
below).

`LineReader` waits for the line with `select()` on the terminal and on the signal module's wakeup pipe, into
which the handler writes at once from whichever thread it runs in: the wait ends at any Ctrl-C, and the
interpreter raises KeyboardInterrupt before the next wait starts. `input()` is called only once a whole line
(or the end of input) is waiting, so it does not block. The terminal stays in its usual line mode: the kernel
echoes and edits the line, as it does for `input()` without the readline module.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading

from rich.console import Console

# How often a blocking wait of the main thread (for a reply, for pending writes) looks for a Ctrl-C that
# arrived just before it blocked; waiting in slices this long costs nothing measurable.
SIGNAL_CHECK_S = 0.1


class LineReader:
    """Reads the lines typed at the terminal, for the main thread of an interactive chat; a context manager
    that installs the signal wakeup pipe for its duration (elsewhere, or off POSIX, plain `Console.input`)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._wakeup: tuple[int, int] | None = None  # the pipe's read and write ends while installed
        self._previous = -1

    def __enter__(self) -> LineReader:
        if os.name == "posix" and threading.current_thread() is threading.main_thread():
            read_end, write_end = os.pipe()
            for end in (read_end, write_end):
                os.set_blocking(end, False)
            self._previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self._wakeup = (read_end, write_end)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous)
            for end in self._wakeup:
                os.close(end)
            self._wakeup = None

    def read(self, prompt: str) -> str:
        """The next line typed after `prompt` (rich markup), without its newline. Raises EOFError at the end of
        input (Ctrl-D) and KeyboardInterrupt at Ctrl-C."""
        if self._wakeup is None:
            return self.console.input(prompt)
        self.console.print(prompt, end="")
        self._wait_for_line(self._wakeup[0])
        return self.console.input()

    @staticmethod
    def _wait_for_line(wakeup: int) -> None:
        terminal = sys.stdin.fileno()
        while terminal not in select.select([terminal, wakeup], [], [])[0]:
            # A signal was noted (now or while the chat was busy): empty the pipe and wait on. If it was a
            # Ctrl-C, the interpreter raises KeyboardInterrupt as the loop comes round.
            try:
                while os.read(wakeup, 4096):
                    pass
            except BlockingIOError:
                pass
