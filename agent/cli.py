"""The terminal chat: `python -m agent --user alice`.

Streams replies, shows (dimmed) what was recalled, and offers /memories, /forget, /graph, /recall and /help.
With piped standard input it prints one plain reply per input line, without colours, each once the line before
is memorized; at a terminal the next message does not wait for that (`Context.wait_for_writes`). Every
failure is one line; quitting (quit, exit, bye, Ctrl-D, Ctrl-C) finishes pending memory writes first.

Ctrl-C is a normal way to end the session, so the exit status is 0, as for `quit`, not 130. During a reply it
ends the session at once: the reply is abandoned (it runs in its own thread, which may be stuck on a hanging
model endpoint) and the user's message is stored verbatim. When the session ends with memory writes still
pending, the chat waits for them; a Ctrl-C during that wait stores them verbatim at once, without the model
(further Ctrl-Cs are ignored while it does). A Ctrl-C during `/forget all` ends the session once the erasure is
complete. The stores are closed cleanly in every case; nothing acknowledged is lost.

On a terminal the prompt shows at once: the chat reads its settings (light), then imports LangGraph, LangChain and
the memory engines and opens the stores in a background thread (`Startup`) while the user types; the first
reply waits for it if need be. A failure there (a data directory held by another process, say) is one line and
exit status 2, as it is before any prompt with piped input.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import getpass
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.context import Context
from agent.settings import OFFLINE_NOTICE, load_config, load_env
from agent.terminal import SIGNAL_CHECK_S, LineReader
from memory.errors import MemoryLayerError, one_line
from memory.filters import check_id

if TYPE_CHECKING:
    from agent.settings import AgentRuntime

MAX_INPUT_CHARS = 20_000
QUIT_WORDS = {"quit", "exit", "bye"}
HELP = """Commands:
  /memories        what I remember about you, newest first
  /forget <id>     forget one memory (an id or its first characters, as /memories shows)
  /forget all      forget everything about you (asks for confirmation)
  /graph           the entities and relations I know about you
  /export <file>   save everything I remember about you to a JSON file (a backup, or to move it)
  /import <file>   load an exported file into your memories (what you already have is not doubled)
  /recall          show or hide the recalled memories before each reply
  /help            this help
  quit, exit, bye, Ctrl-D or Ctrl-C end the session."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m agent", description="Chat with an assistant that remembers you "
                                     "across sessions (memories in Milvus, entities and relations in Kuzu).")
    parser.add_argument("--user", default=None, help="whose memories to use (default: your login name)")
    parser.add_argument("--data-dir", default=None, help="where embedded data lives (default: MEMORY_DATA_DIR or "
                        "~/.local/share/agent-memory)")
    parser.add_argument("--model", default=None, help="chat model name (default: LLM_MODEL or gpt-4o-mini)")
    parser.add_argument("--env-file", default=None, help="read settings from this file instead of ./.env")
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--show-recall", dest="show_recall", action="store_true", default=None,
                      help="show recalled memories before each reply (default on a terminal)")
    show.add_argument("--hide-recall", dest="show_recall", action="store_false", help="do not show them")
    parser.add_argument("--recall-limit", type=int, default=8, help="memories recalled per turn (default 8)")
    return parser.parse_args(argv)


class Startup:
    """Building the agent runtime (imports, stores, model) in a background thread; `runtime` waits for it."""

    def __init__(self, build: Callable[[], AgentRuntime], on_failure: Callable[[BaseException], None]) -> None:
        self._build = build
        self._on_failure = on_failure
        self._runtime: AgentRuntime | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._runtime = self._build()
            # What start-up loaded (LangChain, LangGraph, pymilvus, the stores: ~230,000 objects that live as long as
            # the chat) leaves the cyclic collector's view: each full collection scanned them all, a pause of 140-210
            # ms in whichever turn or write it fell (one per ~360 searches and adds, measured), against ~0 now.
            gc.freeze()
        except BaseException as exc:  # reported by `on_failure` and raised again by `runtime`
            self._error = exc
            self._on_failure(exc)
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        """True once the runtime is built (or failed)."""
        return self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        """What building the runtime raised, if it failed."""
        return self._error

    @property
    def failed(self) -> bool:
        """True when building the runtime failed."""
        return self._error is not None

    def wait(self) -> None:
        """Block until the runtime is built (or failed)."""
        self._done.wait()

    @property
    def runtime(self) -> AgentRuntime:
        """The runtime, once built; raises what building it raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._runtime is not None
        return self._runtime


class Chat:
    """One interactive (or piped) chat session."""

    def __init__(self, startup: Startup, console: Console, user_id: str, interactive: bool,
                 show_recall: bool, recall_limit: int) -> None:
        self.startup = startup
        self.console = console
        self.user_id = user_id
        self.interactive = interactive
        self.show_recall = show_recall
        self.context = Context(user_id=user_id, recall_limit=recall_limit, wait_for_writes=not interactive)
        self.thread = {"configurable": {"thread_id": str(uuid.uuid4())}}
        self.reader = LineReader(console)  # reads at the terminal; `main` installs it around the session
        self.abandoned: threading.Thread | None = None  # a reply left running when Ctrl-C ended the session
        self._handed_over = False

    @property
    def runtime(self) -> AgentRuntime:
        """The memory, model, writer and graph (waits while they are still being opened)."""
        return self.startup.runtime

    # -- input ----------------------------------------------------------------------------------------------
    def lines(self) -> Iterator[str]:
        """User input until end of input."""
        while True:
            try:
                line = self.reader.read("[bold cyan]You[/]: ") if self.interactive else sys.stdin.readline()
            except EOFError:
                return
            if not self.interactive and line == "":
                return
            yield line

    def run(self) -> None:
        """The read-reply loop."""
        for raw in self.lines():
            text = _CONTROL.sub("", raw).strip()
            if not text:
                continue
            if text.lower() in QUIT_WORDS:
                break
            if text.startswith("/"):
                self.command(text)
                continue
            if len(text) > MAX_INPUT_CHARS:
                self.say_error(f"That message is {len(text):,} characters long; the limit is {MAX_INPUT_CHARS:,}.")
                continue
            self.turn(text)

    # -- one turn -------------------------------------------------------------------------------------------
    def turn(self, text: str) -> None:
        """Recall, reply (streamed), memorize in the background.

        The turn runs in its own thread so that Ctrl-C ends the session at once, even while the model endpoint
        hangs: the turn is then abandoned (it prints and memorizes nothing more) and the message is stored
        verbatim."""
        from agent.writer import Exchange

        failure: list[BaseException] = []
        self._handed_over = False  # set once the memorize step has queued this turn for the writer

        def work() -> None:
            try:
                self._turn(text)
            except BaseException as exc:  # handed to the main thread
                failure.append(exc)

        worker = threading.Thread(target=work, name="chat-turn", daemon=True)
        worker.start()
        try:
            while worker.is_alive():  # in slices: a Ctrl-C just before a join that never ends is still seen
                worker.join(SIGNAL_CHECK_S)
        except KeyboardInterrupt:
            self.abandoned = worker
            if not self._handed_over:
                self.runtime.writer.submit(Exchange(self.user_id, [{"role": "user", "content": text}],
                                                    infer=False, metadata={"source": "interrupted"}))
            self.runtime.writer.seal()  # the abandoned turn must not memorize the message a second time
            self.console.print()
            raise
        if failure:
            raise failure[0]

    def _turn(self, text: str) -> None:
        from langchain_core.messages import AIMessageChunk, HumanMessage

        from agent.graph import TURN_DURABILITY

        printed = False
        try:
            stream = self.runtime.graph.stream({"messages": [HumanMessage(text)]}, self.thread, context=self.context,
                                               stream_mode=["messages", "updates"], durability=TURN_DURABILITY)
            for mode, payload in stream:
                if self.abandoned:
                    return
                if mode == "updates":
                    printed = self._on_update(payload, printed)
                    continue
                chunk, meta = payload
                if meta.get("langgraph_node") == "respond" and isinstance(chunk, AIMessageChunk) and chunk.content:
                    if not printed:
                        self.console.print("[bold green]Assistant[/]: ", end="")
                        printed = True
                    self.console.print(escape(str(chunk.content)), end="", soft_wrap=True)
        except MemoryLayerError as exc:
            if not self.abandoned:
                self.say_error(one_line(exc))
        if printed and not self.abandoned:
            self.console.print()

    def _on_update(self, update: dict, printed: bool) -> bool:
        from langchain_core.messages import AIMessage

        if "memorize" in update:
            self._handed_over = True
        if "recall" in update and self.show_recall:
            recalled = (update["recall"] or {}).get("recalled", [])
            for memory in recalled:
                self.console.print(f"  [dim]· recalled: {escape(memory['memory'])}[/]")
        if "respond" in update:
            reply = (update["respond"] or {}).get("messages", [None])[-1]
            if isinstance(reply, AIMessage) and reply.additional_kwargs.get("error"):
                self.say_error(str(reply.content))
                return printed
            if isinstance(reply, AIMessage) and not printed:  # a model that does not stream
                self.console.print(f"[bold green]Assistant[/]: {escape(str(reply.content))}", end="")
                return True
        return printed

    # -- commands -------------------------------------------------------------------------------------------
    def command(self, text: str) -> None:
        """Run a /command."""
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        try:
            if name == "/help":
                self.console.print(HELP, markup=False)
            elif name == "/memories":
                self.list_memories()
            elif name == "/forget" and arg == "all":
                self.forget_all()
            elif name == "/forget" and arg:
                self.forget(arg)
            elif name == "/graph":
                self.show_graph()
            elif name == "/export" and arg:
                self.export(arg)
            elif name == "/import" and arg:
                self.import_file(arg)
            elif name == "/recall":
                self.show_recall = not self.show_recall
                self.console.print(f"Recalled memories are now {'shown' if self.show_recall else 'hidden'}.")
            else:
                self.say_error(f"Unknown command {name!r}; type /help.")
        except MemoryLayerError as exc:
            self.say_error(one_line(exc))

    def list_memories(self) -> None:
        """What is remembered about this user, newest first."""
        self.runtime.writer.wait(timeout=120)
        memories = self.runtime.memory.get_all(user_id=self.user_id, limit=200)["results"]
        if not memories:
            self.console.print("I don't remember anything about you yet.")
            return
        table = Table(title=f"What I remember about {escape(self.user_id)}", show_lines=False)
        table.add_column("id", style="dim", no_wrap=True)
        table.add_column("memory")
        table.add_column("updated", style="dim", no_wrap=True)
        for memory in memories:
            table.add_row(memory["id"][:8], escape(memory["memory"]), (memory["updated_at"] or "")[:16])
        self.console.print(table)

    def forget(self, prefix: str) -> None:
        """Forget the one memory whose id starts with `prefix`."""
        self.runtime.writer.wait(timeout=120)
        memories = self.runtime.memory.get_all(user_id=self.user_id, limit=100_000)["results"]
        matches = [m for m in memories if m["id"].startswith(prefix)]
        if len(matches) != 1:
            self.say_error(f"No memory of yours has an id starting with {prefix!r}." if not matches else
                           f"{len(matches)} memories start with {prefix!r}; give more characters.")
            return
        self.runtime.memory.delete(matches[0]["id"])
        self.console.print(f"Forgotten: {escape(matches[0]['memory'])}")

    def forget_all(self) -> None:
        """Forget everything about this user, after confirmation."""
        self.runtime.writer.wait(timeout=120)
        prompt = f"Forget everything about {self.user_id}? This cannot be undone. [y/N] "
        if self.interactive:
            answer = self.reader.read(escape(prompt))
        else:
            self.console.print(prompt, markup=False)
            answer = sys.stdin.readline()
        if answer.strip().lower() not in {"y", "yes"}:
            self.console.print("Kept everything.")
            return
        with _sigint_deferred():  # a Ctrl-C ends the session once the erasure is complete, not half-way through
            self.console.print(f"Forgetting everything about {escape(self.user_id)}…")
            result = self.runtime.memory.delete_all(user_id=self.user_id)
            count = result["deleted"]
            self.console.print(f"Forgot everything ({_count(count, 'memory', 'memories')}, the graph and "
                               "the history).")

    def export(self, path: str) -> None:
        """Save this user's memories, graph and history to the file `path`."""
        from memory.transfer import write_document

        self.runtime.writer.wait(timeout=120)
        with self.console.status("Saving…"):
            document = self.runtime.memory.export(user_id=self.user_id)
            written = write_document(document, path)
        self.console.print(f"Saved {_count(len(document['memories']), 'memory', 'memories')} and "
                           f"{_count(len(document['relations']), 'relation', 'relations')} to {escape(str(written))}.")

    def import_file(self, path: str) -> None:
        """Load an export file into this user's memories."""
        from memory.transfer import read_document

        self.runtime.writer.wait(timeout=120)
        document = read_document(path)
        # a Ctrl-C ends the session once the file is loaded, not half-way through; a file from another embedder
        # is embedded anew, which takes a while (e5: ~25 memories a second on 2 cores)
        with _sigint_deferred(), self.console.status("Loading…"):
            counts = self.runtime.memory.restore(document, user_id=self.user_id)
        had = f" ({counts['already_remembered']} I already had)" if counts["already_remembered"] else ""
        self.console.print(f"Loaded {_count(counts['memories'], 'memory', 'memories')}{had} and "
                           f"{_count(counts['relations'], 'relation', 'relations')} from {escape(path)}.")

    def show_graph(self) -> None:
        """The user's entities and current relations."""
        self.runtime.writer.wait(timeout=120)
        relations = self.runtime.memory.relations(user_id=self.user_id, limit=500)
        if not relations:
            self.console.print("No entities or relations yet.")
            return
        table = Table(title=f"What I know about {escape(self.user_id)}'s world")
        for column in ("source", "relationship", "destination", "since"):
            table.add_column(column)
        for rel in relations:
            table.add_row(escape(rel["source"]), rel["relationship"], escape(rel["destination"]),
                          (rel["valid_from"] or "")[:10])
        self.console.print(table)

    def say_error(self, message: str) -> None:
        """One line, in yellow on a terminal."""
        self.console.print(f"[yellow]{escape(message)}[/]")

    # -- ending ---------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Write what is pending (with a spinner), then close; a Ctrl-C stores it verbatim instead.

        Once the verbatim save (or the closing) has begun, further Ctrl-Cs are ignored for the rest of the process:
        it takes a moment (no model call), and stopping it half-way would lose the user's words."""
        if not self.startup.ready:
            with _sigint_ignored():  # the stores are still opening: let them, so that they close cleanly
                self.startup.wait()
        if self.startup.failed:
            return  # nothing is open; the failure was reported
        writer = self.runtime.writer
        writer.seal()
        try:
            if writer.pending:
                with self.console.status("Saving memories…"):
                    while not writer.wait(SIGNAL_CHECK_S):  # in slices, as the reply's join in `turn`
                        pass
        except KeyboardInterrupt:
            _sigint_ignored_from_now()
            saved = writer.drain_verbatim()
            self.console.print(f"Saved {saved} pending message(s) verbatim.")
            self.runtime.memory.close()
            return
        _sigint_ignored_from_now()
        self.runtime.memory.close()

    def stuck(self) -> bool:
        """True when a reply was abandoned at Ctrl-C: its graph step may still wait on the model endpoint in a
        worker thread that the interpreter would wait for at exit."""
        return self.abandoned is not None


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _startup_failed(console: Console, exc: BaseException) -> int:
    """Say in one line why the chat cannot start; the exit status (2)."""
    message = str(exc) if isinstance(exc, MemoryLayerError) and str(exc) else one_line(exc)
    console.print(f"[red]error:[/] {escape(message)}")
    return 2


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_ignored_from_now() -> None:
    """Ignore Ctrl-C for the rest of the process (main thread only; elsewhere a no-op): the chat is ending. Python
    gives a signal its default action back as the interpreter exits, unless it is ignored: a second Ctrl-C then
    killed the finished chat (exit status -2, everything already saved)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that comes inside the block and raise KeyboardInterrupt as the block ends: what the block
    does is finished first (main thread only, and only where Ctrl-C raises KeyboardInterrupt; else a no-op)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def warm_up(runtime: AgentRuntime, user_id: str) -> None:
    """The user's memory warmed while they type their first message: a process's first search took 140-220 ms
    against 20-50 ms for the next, and its first add read the user's fingerprints (~0.1-0.2 s at 10,000 memories).
    A store that fails here says so at the first message instead."""
    with contextlib.suppress(MemoryLayerError):
        runtime.memory.warm_up(user_id)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m agent`."""
    args = parse_args(argv)
    interactive = sys.stdin.isatty()
    if not interactive and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")
    console = Console(highlight=False) if interactive and sys.stdout.isatty() else Console(
        no_color=True, highlight=False, force_terminal=False, soft_wrap=True, emoji=False)
    if args.env_file:
        load_env(args.env_file)
    try:
        # an unusable id is refused here, once, rather than by every recall and write of the session
        user_id = check_id(args.user or getpass.getuser() or "default", "--user", required=True)
        config = load_config(args.data_dir)
    except MemoryLayerError as exc:
        return _startup_failed(console, exc)

    def build() -> AgentRuntime:
        from agent.settings import build_runtime

        runtime = build_runtime(config=config, chat_model=args.model,
                                on_error=lambda message: console.print(f"[yellow]{escape(message)}[/]"))
        warm_up(runtime, user_id)
        return runtime

    def failed_after_the_prompt(exc: BaseException) -> None:
        # The user is at the prompt (the main thread waits on the terminal): say why and leave. Nothing is open
        # (whatever had opened was closed by the failing step) and nothing was written yet.
        console.print()
        status = _startup_failed(console, exc)
        sys.stdout.flush()
        os._exit(status)

    startup = Startup(build, on_failure=failed_after_the_prompt if interactive else lambda exc: None)
    if not interactive:  # piped input: an unusable store is reported before anything is read
        try:
            startup.wait()
        except KeyboardInterrupt:  # while the stores open: nothing was written yet
            with _sigint_ignored():
                startup.wait()
                if not startup.failed:
                    startup.runtime.close()
            console.print("[dim](interrupted)[/]")
            return 0
        if startup.error is not None:
            return _startup_failed(console, startup.error)
    show_recall = interactive if args.show_recall is None else args.show_recall
    chat = Chat(startup, console, user_id, interactive, show_recall, args.recall_limit)
    if config.llm is None:
        console.print(f"[yellow]{escape(OFFLINE_NOTICE)}[/]")
    if interactive:
        console.print(f"Hello {escape(user_id)}! Type /help for commands, quit to leave.")
    try:
        with chat.reader:
            chat.run()
    except KeyboardInterrupt:
        console.print("[dim](interrupted)[/]")
    finally:
        chat.finish()
    if interactive:
        console.print("Goodbye — I'll remember.")
    if chat.stuck():
        # The stores are closed and everything is saved; only an abandoned reply is still waiting on the
        # model endpoint, in a thread the interpreter would wait for at exit. Leave without waiting.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
