"""The erasure's copy of the graph database, written by a new process whose memory never held what was erased.

Kuzu 0.11 writes parts of some pages of its file from buffers it does not clear, so bytes that this process' heap
held before reach the disk: an erasure's rewritten graph file once held a Milvus insert request with the erased
user's text, in the tail of a catalog page. `KuzuGraphStore.purge` therefore has the fresh copy written here:
`python -m memory.graph_copy FRESH` receives only the live graph on its standard input (two Arrow IPC streams,
nodes then edges, each preceded by its length) and writes it to a new database at FRESH, durably.

What this does not cover: this process' own later checkpoints (at close, or once the graph's log grows) write
such pages too, from a heap that may still hold freed bytes of what was erased. Closing that would take the graph
store in its own process, restarted after an erasure.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from memory.errors import StoreError
from memory.processes import sigint_blocked

if TYPE_CHECKING:
    import pyarrow as pa

# A copy of a large graph reads and writes it whole; past this the erasure gives up (its deletions stay done).
COPY_TIMEOUT_S = 600
_LENGTH = struct.Struct("<Q")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def copy_in_new_process(fresh: str, nodes: pa.Table | None, edges: pa.Table | None) -> None:
    """Write `nodes` and `edges` (None: none) into a new graph database at `fresh`, in a child process started
    with SIGINT blocked (a Ctrl-C must not stop the erasure half-way); raises `StoreError` if it fails."""
    payload = b"".join(_framed(table) for table in (nodes, edges))
    # the child imports this package from where this process found it, whatever its sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    with sigint_blocked():
        child = subprocess.Popen([sys.executable, "-m", "memory.graph_copy", fresh], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _, said = child.communicate(payload, timeout=COPY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StoreError(f"the graph copy took over {COPY_TIMEOUT_S:g} s") from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        lines = said.decode(errors="replace").strip().splitlines()
        raise StoreError(f"the graph copy process failed (status {child.returncode}): "
                         f"{lines[-1] if lines else 'no message'}")


def _framed(table: pa.Table | None) -> bytes:
    if table is None:
        return _LENGTH.pack(0)
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    stream = sink.getvalue().to_pybytes()
    return _LENGTH.pack(len(stream)) + stream


def _unframed(payload: bytes) -> list[pa.Table | None]:
    import pyarrow as pa

    tables: list[pa.Table | None] = []
    offset = 0
    while offset < len(payload):
        (length,) = _LENGTH.unpack_from(payload, offset)
        offset += _LENGTH.size
        tables.append(pa.ipc.open_stream(pa.py_buffer(payload[offset:offset + length])).read_all() if length
                      else None)
        offset += length
    return tables


def write_database(fresh: str, nodes: pa.Table | None, edges: pa.Table | None) -> None:
    """Create the graph database at `fresh` holding `nodes` and `edges` (bulk COPY), checkpointed and synced."""
    from memory.graph_store import open_database, remove_database, sync_file

    remove_database(fresh)
    db, conn = open_database(fresh)
    try:
        if nodes is not None:
            conn.execute("COPY Entity FROM nodes")  # Kuzu reads the Arrow table by its variable's name
        if edges is not None:
            conn.execute("COPY RELATES FROM edges")
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
        db.close()
    sync_file(fresh)


def main(argv: list[str] | None = None) -> int:
    """`python -m memory.graph_copy FRESH`: the live graph from standard input into a new database at FRESH."""
    (fresh,) = sys.argv[1:] if argv is None else argv
    nodes, edges = _unframed(sys.stdin.buffer.read())
    write_database(fresh, nodes, edges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
