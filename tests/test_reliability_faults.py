"""Model endpoint faults, from a scripted OpenAI-compatible server on 127.0.0.1 reached by the real client:
500s then success (bounded retries), 429 with Retry-After (honoured), a hang past the timeout, a malformed
body, a body cut off, an answer of the wrong schema. `add` either succeeds after retries or raises one one-line
error quickly with nothing written; in the chat (`python -m agent`, piped input) each fault is one line, the
session goes on, and every message the user typed is remembered. Ctrl-C (SIGINT) during a reply or while
memory writes are pending ends the chat cleanly (exit status 0: Ctrl-C is a documented way to quit), keeps
every acknowledged write and stores the user's message verbatim.

(tests/test_agent_cli.py covers a 500 in the chat with retries off; not repeated here.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Fault
from launch import launched

from benchmarks.reliability import FAULT_KINDS, check_consistency, fault_trial, open_memory

REPO = Path(__file__).resolve().parent.parent
WRONG_SCHEMA = json.dumps({"facts": ["the tent is green"], "memories": [{"event": "REMEMBER", "text": 7}]})
NOTHING = json.dumps({"memories": []})


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_add_through_a_faulty_endpoint_succeeds_after_retries_or_fails_in_one_line(tmp_path: Path, kind: str) -> None:
    """status-then-ok: 500, 503, then an answer (LLM_MAX_RETRIES=2); 429-retry-after: one 429 asking for 1 s;
    hang: no answer for 30 s with LLM_TIMEOUT=1 (error within 8 s); malformed / truncated / wrong-schema: a
    one-line error. A failed add leaves no memory, relation, history or journal row; an earlier memory stays."""
    ok, what = fault_trial(tmp_path / "data", kind)
    assert ok, what


def run_chat(tmp_path: Path, stdin: str, server: FakeOpenAI) -> subprocess.CompletedProcess[str]:
    """`python -m agent --user alice` with one retry and a one-second timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "MILVUS_", "EMBEDD"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), LLM_MAX_RETRIES="1", LLM_TIMEOUT="1",
               OPENAI_API_KEY="test-key", OPENAI_BASE_URL=server.base_url, LLM_MODEL="qwen-plus")
    return subprocess.run([sys.executable, "-m", "agent", "--user", "alice"], input=stdin, text=True,
                          capture_output=True, cwd=tmp_path, env=env, timeout=180)


def test_every_fault_in_the_chat_is_one_line_and_every_message_is_remembered(tmp_path: Path) -> None:
    """Each turn is a reply (streamed) then an extraction (in the background), each meeting a fault."""
    script = [
        Fault("hang", seconds=20), Fault("hang", seconds=20),  # reply 1: times out, and again on the retry
        Fault("malformed"),  # extraction 1: a 200 whose body is not JSON (not retried)
        Fault("status", status=429, retry_after=0.5), "Noted, locker 2222.",  # reply 2: waits, then succeeds
        Fault("truncated"), Fault("truncated"),  # extraction 2: the body is cut off, twice
        Fault("truncated"),  # reply 3: the event stream stops mid-event
        WRONG_SCHEMA, WRONG_SCHEMA,  # extraction 3: valid JSON of the wrong shape, twice
        Fault("malformed"),  # reply 4: an event stream that is not JSON
        Fault("hang", seconds=20), Fault("hang", seconds=20),  # extraction 4: times out twice
        "Here is what I know.", NOTHING,  # turn 5 works again
    ]
    says = ["My bike lock code is 1111.", "My gym locker is 2222.", "Remember that the tent is green.",
            "My badge number is 4444.", "Thanks!"]
    with FakeOpenAI(script) as server:
        result = run_chat(tmp_path, "\n".join([*says, "/memories", ""]), server)
        assert server.chat_calls == len(script), "retries are bounded: one retry per failed call, no more"
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in out + result.stderr and not result.stderr.strip(), result.stderr
    reply_failures = [line for line in out.splitlines() if "The language model failed" in line]
    extraction_failures = [line for line in out.splitlines() if line.startswith("memory extraction failed")]
    assert len(reply_failures) == 3, out  # replies 1, 3 and 4
    assert len(extraction_failures) == 4, out  # extractions 1 to 4, each "stored verbatim"
    assert all(line.endswith("your message was stored verbatim") for line in extraction_failures), out
    assert "Noted, locker 2222." in out and "Here is what I know." in out, "the session goes on"
    for line in out.splitlines():  # nothing but chat lines: no stack frames, no multi-line error bodies
        assert not line.startswith(("  File ", "Traceback", "    ")), line
    remembered = out.split("What I remember")[1]
    for said in says[:4]:
        assert said in remembered, said


# -- Ctrl-C --------------------------------------------------------------------------------------------------
TEA = json.dumps({"memories": [{"event": "ADD", "text": "Likes green tea", "relations": [
    {"source": "USER", "relationship": "likes", "destination": "green tea"}]}],
    "entities": [{"name": "green tea", "type": "drink"}]})


def start_chat(tmp_path: Path, server: FakeOpenAI) -> subprocess.Popen[str]:
    """`python -m agent --user alice` reading from a pipe we keep open, with a long model timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "MILVUS_", "EMBEDD"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), LLM_MAX_RETRIES="0",
               LLM_TIMEOUT="120", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=server.base_url, LLM_MODEL="qwen-plus")
    # Ctrl-C as in a terminal: with SIGINT ignored (inherited from a background test run) the chat would rightly
    # ignore the test's Ctrl-C
    return subprocess.Popen(launched([sys.executable, "-m", "agent", "--user", "alice"], default_sigint=True),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)


def interrupt(chat: subprocess.Popen[str], server: FakeOpenAI, calls: int, times: int = 1) -> tuple[str, str, float]:
    """Once the server has seen `calls` chat requests (the last one hanging), send SIGINT `times` times; return
    stdout, stderr and how long the chat took to exit after the first."""
    deadline = time.monotonic() + 120
    while server.chat_calls < calls and time.monotonic() < deadline and chat.poll() is None:
        time.sleep(0.05)
    if chat.poll() is not None:  # it ended early: say how, with what it printed (a SIGABRT once: see launch.py)
        out, err = chat.communicate()
        raise AssertionError(f"the chat exited with {chat.returncode} before the hanging call\n{out}\n{err}")
    assert server.chat_calls == calls, "the chat reached the hanging call"
    time.sleep(0.3)  # well inside the hang
    started = time.monotonic()
    for _ in range(times):
        chat.send_signal(signal.SIGINT)
        time.sleep(0.05)
    try:
        out, err = chat.communicate(timeout=60)
    finally:
        if chat.poll() is None:
            chat.kill()
    return out, err, time.monotonic() - started


def check_after_interrupt(tmp_path: Path, expected: list[str]) -> list[dict[str, Any]]:
    """Reopen the data directory: it opens, nothing is left to replay, the stores agree; the memories."""
    with open_memory(tmp_path / "data") as mem:
        assert mem.history_db.pending() == []
        assert check_consistency(mem, ["alice"]) == []
        memories = mem.get_all(user_id="alice")["results"]
        assert sorted(m["memory"] for m in memories) == sorted(expected)
        return memories


def test_ctrl_c_during_a_reply_exits_at_once_and_keeps_the_message(tmp_path: Path) -> None:
    """The reply hangs (the endpoint never answers); Ctrl-C ends the session within seconds, exit status 0 (a
    documented way to quit), no traceback; the earlier turn's memory and the interrupted message are kept."""
    with FakeOpenAI(["Nice!", TEA, Fault("hang", seconds=60)]) as server:
        chat = start_chat(tmp_path, server)
        assert chat.stdin is not None
        chat.stdin.write("I like green tea.\nMy locker code is 7731.\n")
        chat.stdin.flush()
        out, err, took = interrupt(chat, server, calls=3)
    assert chat.returncode == 0, err
    assert took < 15, f"the chat waited {took:.1f} s for the hanging reply"
    assert "Traceback" not in out + err and not err.strip(), err
    assert "Assistant: Nice!" in out and "(interrupted)" in out
    memories = check_after_interrupt(tmp_path, ["Likes green tea", "My locker code is 7731."])
    assert {m["memory"]: m["metadata"].get("source") for m in memories}["My locker code is 7731."] == "interrupted"
    with open_memory(tmp_path / "data") as mem:
        assert [r["destination"] for r in mem.relations(user_id="alice")] == ["green tea"]


def test_ctrl_c_while_memory_writes_are_pending_saves_them_verbatim(tmp_path: Path) -> None:
    """Input ends while the extraction of the last turn hangs: the chat waits for it; Ctrl-C stores the message
    verbatim at once and quits cleanly (a second Ctrl-C right after is ignored); nothing is stored twice."""
    with FakeOpenAI(["Nice!", TEA, "Sure.", Fault("hang", seconds=60)]) as server:
        chat = start_chat(tmp_path, server)
        assert chat.stdin is not None
        chat.stdin.write("I like green tea.\nMy locker code is 7731.\n")
        chat.stdin.close()
        chat.stdin = None  # communicate() must not touch it again
        out, err, took = interrupt(chat, server, calls=4, times=2)
    assert chat.returncode == 0, err
    assert took < 15, f"the chat waited {took:.1f} s for the hanging extraction"
    assert "Traceback" not in out + err and not err.strip(), err
    assert "Saved 1 pending message(s) verbatim." in out
    check_after_interrupt(tmp_path, ["Likes green tea", "My locker code is 7731."])
