"""Child processes that need something set before they run, started without `Popen(preexec_fn=...)`.

`preexec_fn` makes `subprocess` fork the test process and run Python in the child before `exec`. A test process
that has used Milvus Lite holds gRPC's threads, and gRPC's fork handlers start threads of their own in such a
child: now and then one of them aborted it (SIGABRT) before the `exec` - seen as a chat that "exited with -6"
during its start-up, a few times in a hundred starts with the suite in two workers (the core file showed the
test worker's command line, its main thread in `_posixsubprocess`' child code, a gRPC thread in `abort`).
Without `preexec_fn`, `subprocess` starts the child with `vfork`, which runs no fork handlers; what the child
needs is set by a short Python prelude, which then `exec`s the command (same process id).
"""

from __future__ import annotations

import signal
import sys

_PRELUDE = """\
import ctypes, os, signal, sys
_, default_sigint, death_signal, *command = sys.argv
if default_sigint == "1":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
if int(death_signal) and sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(death_signal))  # PR_SET_PDEATHSIG, kept across exec
os.execv(command[0], command)
"""


def launched(command: list[str], *, default_sigint: bool = False,
             signal_at_parent_death: signal.Signals | None = None) -> list[str]:
    """`command` (its first item a path) behind the prelude: with SIGINT's default disposition when
    `default_sigint` (as a terminal gives it: a test run started in the background of a non-interactive shell
    ignores SIGINT, a child inherits that, and Python then never raises KeyboardInterrupt), and told to receive
    `signal_at_parent_death` when the test process dies (Linux; best effort)."""
    return [sys.executable, "-c", _PRELUDE, "1" if default_sigint else "0", str(int(signal_at_parent_death or 0)),
            *command]
