"""The real entry point, `python -m agent`, driven through piped standard input in a subprocess.

The model is a scripted OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py), reached by the real
client over HTTP; the stores are real, in a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, Fault

REPO = Path(__file__).resolve().parent.parent
THRILLERS = json.dumps({"memories": [{"event": "ADD", "text": "Dislikes thrillers", "relations": [
    {"source": "USER", "relationship": "dislikes", "destination": "thrillers"}]}],
    "entities": [{"name": "thrillers", "type": "concept"}]})
NOTHING = json.dumps({"memories": []})


def chat(tmp_path: Path, stdin: str, *args: str, server: FakeOpenAI | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent --user alice` in `tmp_path` with this input (model settings only if a server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "MILVUS_", "EMBEDD"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), LLM_MAX_RETRIES="0", LLM_TIMEOUT="5")
    if server is not None:
        env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=server.base_url, LLM_MODEL="qwen-plus")
    return subprocess.run([sys.executable, "-m", "agent", "--user", "alice", *args], input=stdin, text=True,
                          capture_output=True, cwd=tmp_path, env=env, timeout=timeout)


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, no traceback, no colour codes."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "\x1b[" not in result.stdout


def test_movie_scenario_across_two_processes(tmp_path: Path) -> None:
    """Session 1 says they dislike thrillers; session 2, a new process, gets that memory into the prompt."""
    with FakeOpenAI(["How about a comedy?", THRILLERS, "Try Paddington 2.", NOTHING]) as server:
        first = chat(tmp_path, "I want to watch a movie tonight, but I don't like thrillers.\n", server=server)
        assert_clean(first)
        assert "Assistant: How about a comedy?" in first.stdout
        second = chat(tmp_path, "Can you recommend a movie?\n", server=server)
        assert_clean(second)
        assert "Try Paddington 2." in second.stdout
        chat_requests = [r for r in server.requests if r.get("stream")]
        assert len(chat_requests) == 2, "replies are streamed"
        system = chat_requests[1]["messages"][0]["content"]
        assert "Dislikes thrillers" in system.split("<memories>")[1]
        assert server.chat_calls == 4, "one reply and one extraction call per turn"


def test_offline_mode_starts_remembers_and_answers(tmp_path: Path) -> None:
    """No model configured: one plain notice, replies from memory, one reply per input line."""
    first = chat(tmp_path, "I am allergic to peanuts.\nMy sister is called Ana.\n")
    assert_clean(first)
    assert first.stdout.count("No language model is configured") == 1
    assert first.stdout.count("Assistant:") == 2
    second = chat(tmp_path, "Am I allergic to anything?\n")
    assert_clean(second)
    assert "I am allergic to peanuts." in second.stdout


def test_model_faults_are_one_line_and_the_message_is_remembered(tmp_path: Path) -> None:
    """A 500 from the endpoint: one line in the chat, the session goes on, the user's words are kept."""
    with FakeOpenAI([Fault("status", status=500), Fault("status", status=503), "Hello again!", NOTHING]) as server:
        result = chat(tmp_path, "My passport number ends in 4242.\nHello?\n/memories\n", server=server)
    assert_clean(result)
    assert "The language model failed" in result.stdout
    assert "Hello again!" in result.stdout, "the session continues after a fault"
    assert "My passport number ends in 4242." in result.stdout.split("What I remember")[1]


def test_commands_forget_all_needs_confirmation(tmp_path: Path) -> None:
    """/forget all asks first; 'n' keeps everything, 'y' erases it."""
    chat(tmp_path, "I live in Lisbon.\n")
    kept = chat(tmp_path, "/forget all\nn\n/memories\n")
    assert_clean(kept)
    assert "Kept everything." in kept.stdout and "I live in Lisbon." in kept.stdout
    gone = chat(tmp_path, "/forget all\ny\n/memories\n/graph\n/help\n/nonsense\n")
    assert_clean(gone)
    assert "Forgot everything (1 memory," in gone.stdout
    assert "I don't remember anything about you yet." in gone.stdout
    assert "/forget <id>" in gone.stdout and "Unknown command" in gone.stdout


def test_odd_input_never_breaks_the_chat(tmp_path: Path) -> None:
    """Empty lines, control characters, invalid UTF-8 and a 1 MB line: one-line answers, nothing lost."""
    data = b"\n   \n\x01\x02 I like tea \x07\n\xff\xfe broken bytes\n" + b"x" * 1_000_000 + b"\n/memories\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "agent", "--user", "alice"], input=data, capture_output=True,
                            cwd=tmp_path, env=env, timeout=120)
    out = result.stdout.decode()
    assert result.returncode == 0 and b"Traceback" not in result.stderr
    assert "the limit is 20,000" in out
    assert "I like tea" in out.split("What I remember")[1]


def test_help_and_busy_data_directory(tmp_path: Path) -> None:
    """--help documents the options; a second process on the same data gets one line naming the holder."""
    help_run = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert help_run.returncode == 0
    for option in ("--user", "--data-dir", "--model", "--show-recall", "--env-file"):
        assert option in help_run.stdout
    env = {**os.environ, "MEMORY_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    env.pop("OPENAI_API_KEY", None)
    holder = subprocess.Popen([sys.executable, "-m", "agent", "--user", "alice"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    try:
        lock = tmp_path / "data" / "memory.lock"
        for _ in range(300):
            if lock.exists() and lock.read_text().strip():
                break
            subprocess.run(["sleep", "0.1"])
        second = chat(tmp_path, "hello\n")
        assert second.returncode == 2
        assert f"in use by process {holder.pid}" in second.stdout
        assert "Traceback" not in second.stderr
    finally:
        holder.communicate(b"I still work\n", timeout=120)
    assert holder.returncode == 0


@pytest.mark.parametrize("user", ["x" * 300, "al\tice", b"al\xffice"], ids=["too-long", "tab", "not-utf8"])
def test_an_unusable_user_id_is_one_line_and_status_2_before_anything_opens(tmp_path: Path, user: str | bytes) -> None:
    """It used to be refused by every recall and every write of the session, one warning each, nothing kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "agent", "--user", user], input=b"I like chess.\n",
                         capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 2
    shown = run.stdout.decode(errors="replace")
    assert shown.startswith("error: --user ") and shown.count("\n") == 1, shown
    assert not run.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("user", ['x" or ""=="', "o'brien\\"])
def test_odd_user_ids_work_in_the_chat(tmp_path: Path, user: str) -> None:
    """User ids with quotes and backslashes are just names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "agent", "--user", user], input="I like chess.\n/memories\n",
                         text=True, capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert_clean(run)
    assert "I like chess." in run.stdout.split("What I remember")[1]
