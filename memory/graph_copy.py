"""The erasure's copy of the graph database, written by a new process whose memory never held what was erased.

Kuzu 0.11 writes parts of some pages of its file from buffers it does not clear, so bytes that this process' heap
held before reach the disk: an erasure's rewritten graph file once held a Milvus insert request with the erased
user's text, in the tail of a catalog page. `KuzuGraphStore.purge` therefore has the fresh copy written by
`python -m memory.graph_copy FRESH`: this process writes the live nodes and edges to two JSON files beside FRESH
(`copy_in_new_process`), and the new process bulk-loads them (Kuzu's bundled JSON reader, `COPY ... FROM`) into a
new database at FRESH, durably. The files hold only live data, and are removed after.

What this does not cover: this process' own later checkpoints (at close, or once the graph's log grows) write
such pages too, from a heap that may still hold freed bytes of what was erased. Closing that would take the graph
store in its own process, restarted after an erasure.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from memory.errors import StoreError
from memory.processes import sigint_blocked

# A copy of a large graph reads and writes it whole; past this the erasure gives up (its deletions stay done).
COPY_TIMEOUT_S = 600
NODE_FIELDS = ("id", "user_id", "name", "norm", "type", "embedding", "created_at")
EDGE_FIELDS = ("from", "to", "id", "rel_type", "valid_from", "valid_to", "memory_ids", "created_at")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def copy_in_new_process(fresh: str, nodes: Iterable[Iterable[Any]], edges: Iterable[Iterable[Any]]) -> None:
    """Write a new graph database at `fresh` holding `nodes` and `edges` (rows of `NODE_FIELDS` and `EDGE_FIELDS`;
    edges name their nodes' ids), by a child process started with SIGINT blocked (a Ctrl-C must not stop an
    erasure half-way); raises `StoreError` if it fails."""
    try:
        for rows, fields, path in ((nodes, NODE_FIELDS, _nodes_file(fresh)), (edges, EDGE_FIELDS, _edges_file(fresh))):
            with open(path, "w", encoding="utf-8") as file:
                json.dump([dict(zip(fields, map(_json_value, row), strict=True)) for row in rows], file,
                          ensure_ascii=False)
        # the child imports this package from where this process found it, whatever its sys.path
        path_entries = filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path_entries)}
        with sigint_blocked():
            child = subprocess.Popen([sys.executable, "-m", "memory.graph_copy", fresh], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            _, said = child.communicate(timeout=COPY_TIMEOUT_S)
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
    finally:
        discard_inputs(fresh)


def discard_inputs(fresh: str) -> None:
    """Remove the JSON files of a copy to `fresh` (after it, or left by a crash)."""
    for path in (_nodes_file(fresh), _edges_file(fresh)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _nodes_file(fresh: str) -> str:
    return fresh + ".nodes.json"


def _edges_file(fresh: str) -> str:
    return fresh + ".edges.json"


def _json_value(value: Any) -> Any:
    """A Kuzu value as JSON that its COPY reads back as the same value (timestamps as "YYYY-MM-DD hh:mm:ss.ffffff")."""
    return value.isoformat(sep=" ") if isinstance(value, datetime) else value


def write_database(fresh: str) -> None:
    """Create the graph database at `fresh` from the JSON files beside it (bulk COPY), checkpointed and synced."""
    from memory.graph_store import open_database, remove_database, sync_file

    remove_database(fresh)
    db, conn = open_database(fresh)
    try:
        conn.execute("LOAD EXTENSION json")  # bundled with Kuzu 0.11: nothing is downloaded
        for table, path in (("Entity", _nodes_file(fresh)), ("RELATES", _edges_file(fresh))):
            if os.path.getsize(path) > len("[]"):
                # run in the file's directory: its name is ours, while the directory's path may hold a quote
                conn.execute(f"COPY {table} FROM '{os.path.basename(path)}'")
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
        db.close()
    sync_file(fresh)


def main(argv: list[str] | None = None) -> int:
    """`python -m memory.graph_copy FRESH`: the JSON files beside FRESH into a new graph database at FRESH."""
    (fresh,) = sys.argv[1:] if argv is None else argv
    fresh = os.path.abspath(fresh)
    os.chdir(os.path.dirname(fresh))
    write_database(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
