"""A real Milvus server for tests: the standalone Milvus 2.3.5 shipped by PyPI's `milvus` package.

`MilvusServer` runs `milvus-server` (the package's entry point) in a temporary data directory with
authorization on, every component registered on 127.0.0.1 (the `--extra-config <component>.ip=127.0.0.1` of
`../shared/reference/anchors.md`), the gRPC proxy on a free port of 127.0.0.1, and the embedded etcd on two
more free ports of 127.0.0.1 (its defaults, 2379/2380, would clash with any other Milvus or etcd on the
machine; Milvus reads `ETCD_CONFIG_PATH` from the environment). `start()` returns once the
server answers an authenticated request, or raises `MilvusServerError` with the end of its log after a
bounded wait. `stop()` sends SIGINT to `milvus-server` (which stops the `milvus` binary it started), then,
if the process group is still alive after a grace period, SIGKILL to that group; it also deletes the data
directory when the helper made it. Used as a context manager it always stops, whatever the body raised.

The server's process group is its own (a Ctrl-C in the terminal reaches only pytest), and on Linux the
server gets SIGINT if the test process dies without stopping it.

Clients must use 127.0.0.1: some components still listen on every interface (Milvus 2.3 has no setting for
that), but nothing here connects anywhere else.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from launch import launched

HOST = "127.0.0.1"
ROOT_TOKEN = "root:Milvus"  # Milvus' built-in superuser and its default password
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")
READY_BANNER = "Ctrl+C to exit"  # printed by milvus-server once its health check passes
START_TIMEOUT = 180.0
STOP_GRACE = 15.0


class MilvusServerError(RuntimeError):
    """The server did not start (the message ends with the last lines of its log)."""


def unavailable_reason() -> str | None:
    """Why a Milvus server cannot be started here (the `milvus` package is not importable), or None."""
    try:
        spec = importlib.util.find_spec("milvus")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return "the 'milvus' package (PyPI milvus==2.3.5, which provides milvus-server) is not installed"
    if not (Path(spec.origin).parent / "data" / "bin").is_dir():
        return f"the 'milvus' module at {spec.origin} is not the milvus-server package (no data/bin)"
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports of 127.0.0.1 that nothing listens on right now (all held open while choosing)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def closed_port() -> int:
    """A port of 127.0.0.1 that refuses connections (nothing listens on it)."""
    return free_port()


class MilvusServer:
    """One Milvus standalone server on 127.0.0.1 with authorization on; see the module docstring."""

    def __init__(self, data_dir: Path | None = None, *, start_timeout: float = START_TIMEOUT,
                 stop_grace: float = STOP_GRACE, keep_data: bool = False) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="milvus-server-")) if data_dir is None else Path(data_dir)
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.keep_data = keep_data
        self.token = ROOT_TOKEN
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def uri(self) -> str:
        """The server's URI (127.0.0.1 only)."""
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where `milvus-server` itself writes (its banner and errors)."""
        return self.data_dir / "milvus-server.log"

    # -- start ----------------------------------------------------------------------------------------------
    def start(self) -> MilvusServer:
        """Start the server and wait until it answers an authenticated request; stop it if that fails."""
        if self.process is not None:
            raise MilvusServerError("this server is already started")
        reason = unavailable_reason()
        if reason:
            raise MilvusServerError(reason)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port, etcd_client, etcd_peer = free_ports(3)
        etcd_config = self.data_dir / "embed-etcd.yaml"
        etcd_config.write_text(f"listen-client-urls: http://{HOST}:{etcd_client}\n"
                               f"advertise-client-urls: http://{HOST}:{etcd_client}\n"
                               f"listen-peer-urls: http://{HOST}:{etcd_peer}\n"
                               f"initial-advertise-peer-urls: http://{HOST}:{etcd_peer}\n"
                               f"initial-cluster: default=http://{HOST}:{etcd_peer}\n", encoding="utf-8")
        command = [sys.executable, "-c", "import milvus; milvus.main()", "--data", str(self.data_dir / "milvus"),
                   "--proxy-port", str(self.port), "--etcd-port", str(etcd_client), "--authorization-enabled", "true"]
        for component in COMPONENTS:
            command += ["--extra-config", f"{component}.ip={HOST}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ETCD_CONFIG_PATH": str(etcd_config)}
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            # told to stop (SIGINT) when the test process dies
            self.process = subprocess.Popen(launched(command, signal_at_parent_death=signal.SIGINT),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, deadline: float) -> None:
        binary_seen = False
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise MilvusServerError(f"milvus-server exited with code {self.process.returncode} while starting"
                                        f"{self._log_tail()}")
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            if "Wait for milvus server started timeout" in text or "Milvus server already stopped" in text:
                raise MilvusServerError(f"milvus-server gave up starting{self._log_tail()}")
            # milvus-server waits its own 180 s for a binary that already died: notice that at once
            binary_alive = bool(_group_members(self.process.pid) - {self.process.pid})
            binary_seen = binary_seen or binary_alive
            if (binary_seen and not binary_alive) or self._binary_panicked():
                raise MilvusServerError(f"the milvus binary died while starting{self._log_tail()}")
            if READY_BANNER in text:
                self.port = self._configured_port()
                if self._answers():
                    return
            time.sleep(0.5)
        raise MilvusServerError(f"Milvus did not answer on {self.uri} within {self.start_timeout:g} s"
                                f"{self._log_tail()}")

    def _configured_port(self) -> int:
        """The proxy port milvus-server wrote in its config (it moves up from ours if ours got taken)."""
        config = self.data_dir / "milvus" / "configs" / "milvus.yaml"
        section = ""
        for line in config.read_text(encoding="utf-8").splitlines():
            if line and not line[0].isspace() and line.rstrip().endswith(":"):
                section = line.strip()[:-1]
            elif section == "proxy" and line.startswith("  port:"):
                return int(line.split(":", 1)[1].split("#", 1)[0])
        return self.port

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, token=self.token, timeout=3)
        except Exception:
            return False
        try:
            client.list_collections()
            return True
        except Exception:
            return False
        finally:
            client.close()

    def _binary_panicked(self) -> bool:
        log = self.data_dir / "milvus" / "logs" / "milvus-stderr.log"
        if not log.exists():
            return False
        text = log.read_text(encoding="utf-8", errors="replace")
        return text.startswith(("panic:", "fatal error:")) or "\npanic:" in text or "\nfatal error:" in text

    def _log_tail(self, lines: int = 15) -> str:
        parts = []
        for path in (self.log_path, self.data_dir / "milvus" / "logs" / "milvus-stderr.log"):
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                start = next((i for i, line in enumerate(text) if line.startswith(("panic:", "fatal error:"))), None)
                shown = text[start:start + lines] if start is not None else text[-lines:]
                parts.append(f"\n--- {path} ---\n" + "\n".join(shown))
        return "".join(parts)

    # -- stop -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGINT to milvus-server, SIGKILL to its process group if anything is left after a grace period;
        then delete the data directory if this helper made it. Idempotent."""
        process, self.process = self.process, None
        if process is not None:
            group = process.pid  # start_new_session: the group id is the server's pid
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=self.stop_grace)
            if process.poll() is not None:  # milvus-server is gone; the binary may outlive it by a moment
                deadline = time.monotonic() + 5
                while _group_alive(group) and time.monotonic() < deadline:
                    time.sleep(0.1)
            if _group_alive(group):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        if self._own_dir and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _group_members(group: int) -> set[int]:
    """The live (not zombie) processes of a process group, from /proc (empty where there is no /proc)."""
    members = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, _, pgid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgid) == group and state != "Z":
            members.add(int(entry.name))
    return members


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["HOST", "ROOT_TOKEN", "MilvusServer", "MilvusServerError", "closed_port", "free_port", "free_ports",
           "unavailable_reason"]
