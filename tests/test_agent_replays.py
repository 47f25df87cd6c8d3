"""Scripted conversation replays (tests/replays/*.yaml) through the real graph and real stores.

Each replay is a list of sessions; each session reopens the stores (as a new run of the chat would) and plays
its user turns through recall -> respond -> memorize. The chat model and the memory's extraction model are
scripted with the replay's answers; everything else is real. Expectations: what the memory holds afterwards,
and what the prompt sent to the chat model must and must not contain.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ScriptedModel, make_memory, scripted
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from pydantic import PrivateAttr

from agent.context import Context
from agent.graph import build_graph
from agent.offline import OfflineChatModel
from agent.writer import MemoryWriter

REPLAYS = sorted((Path(__file__).parent / "replays").glob("*.yaml"))


def run_session(data_dir: Path, session: dict[str, Any], offline: bool) -> None:
    """Play one session's turns against freshly opened stores, checking each turn's prompt and reply."""
    extractor = None if offline else scripted()
    chat: ScriptedModel | OfflineChatModel = OfflineChatModel() if offline else scripted()
    memory = make_memory(data_dir, extractor)
    writer = MemoryWriter(memory)
    graph = build_graph(memory, chat, writer, infer=not offline)
    thread = {"configurable": {"thread_id": "replay"}}
    try:
        for turn in session["turns"]:
            if not offline:
                chat.push(turn["reply"])
                extractor.push(json.dumps(turn.get("extract", {"memories": []}), ensure_ascii=False))
            state = graph.invoke({"messages": [HumanMessage(turn["say"])]}, thread,
                                 context=Context(user_id=session["user"]))
            writer.wait()
            reply = str(state["messages"][-1].content)
            for expected in turn.get("reply_contains", []):
                assert expected in reply, f"reply {reply!r} lacks {expected!r}"
            if offline:
                continue
            prompt = str(chat.calls[-1][0].content)
            for expected in turn.get("prompt_contains", []):
                assert expected in prompt, f"prompt for {turn['say']!r} lacks {expected!r}:\n{prompt}"
            for unwanted in turn.get("prompt_excludes", []):
                assert unwanted not in prompt, f"prompt for {turn['say']!r} has {unwanted!r}:\n{prompt}"
        if not offline:
            assert len(extractor.calls) == len(session["turns"]), "one extraction call per turn"
    finally:
        writer.close()
        memory.close()


@pytest.mark.parametrize("path", REPLAYS, ids=[p.stem for p in REPLAYS])
def test_replay(path: Path, tmp_path: Path) -> None:
    """The replay's sessions run and every expectation holds."""
    replay = yaml.safe_load(path.read_text(encoding="utf-8"))
    offline = bool(replay.get("offline"))
    for session in replay["sessions"]:
        run_session(tmp_path, session, offline)
    memory = make_memory(tmp_path)
    try:
        for expectation in replay.get("expect", []):
            held = {m["memory"] for m in memory.get_all(user_id=expectation["user"])["results"]}
            assert set(expectation.get("memories", [])) <= held, f"{expectation['user']} holds {held}"
            assert not set(expectation.get("absent", [])) & held, f"{expectation['user']} holds {held}"
    finally:
        memory.close()


def test_a_long_session_keeps_only_the_messages_a_prompt_can_show(tmp_path: Path) -> None:
    """The session state stays as small as the prompt's window, and each prompt still shows the last messages."""
    chat, window = scripted(), 6
    memory = make_memory(tmp_path)
    writer = MemoryWriter(memory)
    graph = build_graph(memory, chat, writer, infer=False)
    thread, context = {"configurable": {"thread_id": "long"}}, Context(user_id="ann", history_messages=window)
    try:
        for number in range(15):
            chat.push(f"reply {number}")
            state = graph.invoke({"messages": [HumanMessage(f"turn {number}")]}, thread, context=context)
        writer.wait()
        assert len(state["messages"]) == window, "older messages are dropped from the session's state"
        shown = [str(m.content) for m in chat.calls[-1][1:]]  # after the system prompt
        assert shown == ["turn 12", "reply 12", "turn 13", "reply 13", "turn 14"], "the prompt's window is whole"
        assert len(memory.get_all(user_id="ann")["results"]) == 15, "long-term memory keeps every turn"
    finally:
        writer.close()
        memory.close()


class GatedModel(ScriptedModel):
    """A scripted extraction model that answers only once its gate opens (a slow endpoint), 30 s at most."""

    _gate: threading.Event = PrivateAttr(default_factory=threading.Event)

    def open(self) -> None:
        """Let every answer through."""
        self._gate.set()

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self._gate.wait(30)
        return super()._generate(messages, stop, run_manager, **kwargs)


def test_the_next_message_is_answered_while_the_last_ones_are_still_being_memorized(tmp_path: Path) -> None:
    """A turn does not wait for the extraction model to finish on the exchanges before it while the prompt's
    window shows them; it waits once one of them would be out of both the window and the memory."""
    extractor, chat = GatedModel(replies=[], calls=[]), scripted()
    memory = make_memory(tmp_path, extractor)
    writer = MemoryWriter(memory)
    graph = build_graph(memory, chat, writer)
    thread, context = {"configurable": {"thread_id": "quick"}}, Context(user_id="ann", history_messages=5)

    def turn(number: int) -> None:
        chat.push(f"reply {number}")
        extractor.push(json.dumps({"memories": [{"event": "ADD", "text": f"Owns bike number {number}"}]}))
        graph.invoke({"messages": [HumanMessage(f"I bought bike number {number}")]}, thread, context=context)

    try:
        for number in range(3):  # a window of 5 messages shows the 2 exchanges before the new message
            turn(number)
            assert writer.pending == number + 1, "the turn was answered while every extraction still waited"
        shown = [str(m.content) for m in chat.calls[-1][1:]]
        assert shown[:4] == ["I bought bike number 0", "reply 0", "I bought bike number 1", "reply 1"]
        fourth = threading.Thread(target=turn, args=(3,))
        fourth.start()
        fourth.join(0.5)
        assert len(chat.calls) == 3, "3 exchanges pending, the oldest out of the window: recall waits for it"
        extractor.open()
        fourth.join(60)
        assert len(chat.calls) == 4 and "Owns bike number 0" in str(chat.calls[-1][0].content)
        writer.wait()
        held = {m["memory"] for m in memory.get_all(user_id="ann")["results"]}
        assert held == {f"Owns bike number {n}" for n in range(4)}
    finally:
        extractor.open()
        writer.close()
        memory.close()
