"""`python -m agent` on a terminal (a pseudo-terminal), where the prompt shows while the stores still open.

On a terminal the chat greets the user and prompts at once, and opens the memory in a background thread; these
tests check that the first message waits for it, that a data directory held by another process is still one
line and exit status 2, that one Ctrl-C at a prompt ends the session (even one that the kernel hands to
another thread of the chat) and leaves the data directory closed cleanly, and that a Ctrl-C during /forget all
lets the erasure finish first.
No model is configured (offline replies), so the chat's replies quote what it recalled.
"""

from __future__ import annotations

import ctypes
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import launched
from test_agent_cli import REPO

from memory import Memory, MemoryConfig


class TerminalChat:
    """`python -m agent --user alice` with a pty as its terminal; `expect` reads until a text shows anew."""

    def __init__(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "MILVUS_", "EMBEDD"))}
        env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), TERM="dumb")
        self.master, slave = pty.openpty()
        command = launched([sys.executable, "-m", "agent", "--user", "alice"], default_sigint=True)
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=env,
                                        close_fds=True)
        os.close(slave)
        self.seen = ""
        self._checked = 0  # where the next `expect` starts looking

    def expect(self, text: str, timeout: float = 120) -> str:
        """What the terminal showed since the last `expect`, up to and including the next `text` (fails after
        `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[self._checked:] and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the chat exited and closed the terminal
                    break
        found = self.seen.find(text, self._checked)
        assert found >= 0, f"{text!r} never showed; the terminal shows:\n{self.seen}"
        shown, self._checked = self.seen[self._checked:found + len(text)], found + len(text)
        return shown

    def type(self, line: str) -> None:
        """Type a line and press Enter."""
        os.write(self.master, line.encode() + b"\r")

    def exit_status(self, timeout: float = 120) -> int:
        """Wait for the chat to exit; its status. Reads what it still shows, so it never blocks on output. Fails
        (and kills the chat) if it has not exited after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the chat exited and closed the terminal, all it showed read
                    break
                self.seen += chunk.decode(errors="replace")
            elif self.process.poll() is not None:
                break
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the chat did not exit within {timeout:.0f} s; the terminal shows:\n{self.seen}")
        finally:
            os.close(self.master)
        return status


def test_first_message_typed_at_the_prompt_is_answered_and_remembered(tmp_path: Path) -> None:
    chat = TerminalChat(tmp_path)
    chat.expect("You")
    chat.type("I am allergic to peanuts.")  # at once: the stores may well still be opening
    chat.expect("Assistant")
    chat.expect("You")
    chat.type("Am I allergic to anything?")
    chat.expect("Assistant")
    assert "I am allergic to peanuts." in chat.expect("You")
    chat.type("quit")
    assert chat.exit_status() == 0, chat.seen
    assert "Goodbye" in chat.seen and "Traceback" not in chat.seen
    config = MemoryConfig.from_env({"MEMORY_DATA_DIR": str(tmp_path / "data")})
    with Memory(config) as memory:
        assert [m["memory"] for m in memory.get_all(user_id="alice")["results"]] == ["I am allergic to peanuts."]


def test_a_busy_data_directory_is_one_line_and_status_2_on_a_terminal(tmp_path: Path) -> None:
    config = MemoryConfig.from_env({"MEMORY_DATA_DIR": str(tmp_path / "data")})
    with Memory(config):  # this test process holds the data directory
        chat = TerminalChat(tmp_path)
        assert chat.exit_status() == 2, chat.seen
    assert f"in use by process {os.getpid()}" in " ".join(chat.seen.split())  # as wrapped to the terminal's width
    assert "Traceback" not in chat.seen


def test_ctrl_c_at_the_first_prompt_closes_the_stores_cleanly(tmp_path: Path) -> None:
    chat = TerminalChat(tmp_path)
    chat.expect("You")  # as soon as the prompt begins to show: the stores are still opening
    chat.process.send_signal(signal.SIGINT)
    _assert_ended_cleanly_by_one_ctrl_c(chat, tmp_path)


def test_a_ctrl_c_during_forget_all_ends_the_session_once_the_erasure_is_complete(tmp_path: Path) -> None:
    chat = TerminalChat(tmp_path)
    chat.type("I am allergic to peanuts.")
    chat.expect("Assistant")
    chat.expect("You: ")
    chat.type("/forget all")
    chat.expect("[y/N]")
    chat.type("y")
    chat.expect("Forgetting everything")  # the erasure has begun (it takes a second or two: files are rewritten)
    chat.process.send_signal(signal.SIGINT)
    assert chat.exit_status(timeout=60) == 0, chat.seen
    assert "Forgot everything (1 memory," in chat.seen, chat.seen
    assert chat.seen.index("Forgot everything") < chat.seen.index("(interrupted)")
    assert "Traceback" not in chat.seen
    config = MemoryConfig.from_env({"MEMORY_DATA_DIR": str(tmp_path / "data")})
    with Memory(config) as memory:
        assert memory.get_all(user_id="alice") == {"results": [], "relations": []}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc and tgkill")
def test_a_ctrl_c_that_another_thread_of_the_chat_receives_still_ends_the_session(tmp_path: Path) -> None:
    # The kernel may hand a Ctrl-C to any thread of the process. Python notes it from there, but the main thread
    # waiting on the terminal is not woken: the chat used to sit at its prompt until the user pressed Enter.
    # (It is also the one sure way to hit the race in which a Ctrl-C lands just before the prompt's wait.)
    chat = TerminalChat(tmp_path)
    chat.type("I am allergic to peanuts.")
    chat.expect("Assistant")
    chat.expect("You: ")  # the chat now waits at its second prompt, its workers started
    _interrupt_another_thread(chat.process.pid)
    _assert_ended_cleanly_by_one_ctrl_c(chat, tmp_path, remembered=("I am allergic to peanuts.",))


def _interrupt_another_thread(pid: int) -> None:
    """SIGINT to a thread of process `pid` that is not its main thread and does not block the signal."""
    libc = ctypes.CDLL(None, use_errno=True)
    for tid in sorted(int(name) for name in os.listdir(f"/proc/{pid}/task")):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", status).group(1), 16)
        if tid != pid and not blocked & (1 << (signal.SIGINT - 1)):
            assert libc.tgkill(pid, tid, signal.SIGINT) == 0, os.strerror(ctypes.get_errno())
            return
    pytest.fail(f"process {pid} has no other thread that takes SIGINT")


def _assert_ended_cleanly_by_one_ctrl_c(chat: TerminalChat, tmp_path: Path, remembered: tuple[str, ...] = ()) -> None:
    """The chat exits (status 0, no traceback) after one Ctrl-C, leaving the data directory closed cleanly with
    `remembered` stored and nothing left to replay."""
    assert chat.exit_status(timeout=60) == 0, chat.seen
    assert "(interrupted)" in chat.seen and "Traceback" not in chat.seen
    config = MemoryConfig.from_env({"MEMORY_DATA_DIR": str(tmp_path / "data")})
    with Memory(config) as memory:  # the lock was released and nothing is left to replay
        assert memory.history_db.pending() == []
        assert [m["memory"] for m in memory.get_all(user_id="alice")["results"]] == list(remembered)
