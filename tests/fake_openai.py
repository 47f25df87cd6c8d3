"""A scripted, OpenAI-compatible HTTP server for tests.

No model endpoint is reachable from the test machine, so tests script the model through a real HTTP
server bound to 127.0.0.1 that speaks enough of the OpenAI REST API for the real clients (the ``openai``
SDK, ``langchain_openai.ChatOpenAI`` and ``langchain_openai.OpenAIEmbeddings``) to talk to it unchanged.

Usage::

    from fake_openai import FakeOpenAI, Fault

    with FakeOpenAI(["Hello!", Fault("status", status=429, retry_after=0.1), "again"]) as srv:
        llm = ChatOpenAI(base_url=srv.base_url, api_key="test", model="m", max_retries=0)
        assert llm.invoke("hi").content == "Hello!"
        assert srv.last_messages()[-1]["content"] == "hi"

Endpoints:

* ``POST /v1/chat/completions`` -- answers with the next scripted reply (FIFO), or ``default_reply`` when
  the queue is empty, or HTTP 500 when there is neither. Supports ``"stream": true`` (Server-Sent Events,
  chunked transfer encoding, one flush per event, optional usage chunk, ``data: [DONE]``).
* ``POST /v1/embeddings`` -- deterministic, unit-norm feature-hashing embeddings of character n-grams, so
  similar texts get similar vectors. Honours ``dimensions`` and ``encoding_format`` (``"float"`` or
  ``"base64"``; the openai SDK asks for base64 by default).
* ``GET /v1/models`` and ``GET /v1/models/{id}``.

Standard library only; starts in a few milliseconds and ``stop()`` returns promptly even while a handler
is sleeping on a ``Fault("hang")``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import math
import re
import selectors
import socket
import struct
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAI", "Fault", "embed_text"]

FAKE_MODEL_ID = "fake-model"
_HANG_DEFAULT_REPLY = "ok"
_FAULT_KINDS = ("status", "hang", "malformed", "truncated")


@dataclass
class Fault:
    """A scripted failure for one chat completion request instead of a reply.

    ``kind`` is one of:

    * ``"status"``: HTTP error ``status`` with an OpenAI-shaped JSON error body; if ``retry_after`` is set a
      ``Retry-After`` header (seconds, may be fractional) is sent too.
    * ``"hang"``: sleep ``seconds`` in the handler before answering 200 with ``then`` (or, if ``then`` is
      None, with ``default_reply`` or ``"ok"``). If the server is stopped meanwhile the connection is
      dropped without an answer.
    * ``"malformed"``: 200 with ``Content-Type: application/json`` and a body that is not JSON (for
      streaming requests: an SSE stream whose event data is not JSON).
    * ``"truncated"``: 200 whose JSON body is cut off in the middle: the full ``Content-Length`` is announced
      but only half of the body is sent before the connection is closed (for streaming requests: the
      event stream stops in the middle of an event, without ``[DONE]`` or the terminating chunk).
    """

    kind: str
    status: int = 500
    retry_after: float | None = None
    seconds: float = 5.0
    then: str | None = None

    def __post_init__(self) -> None:
        """Validate ``kind`` early so that typos fail in the test, not in the server thread."""
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown Fault kind {self.kind!r}; expected one of {_FAULT_KINDS}")


# --------------------------------------------------------------------------------------------------------
# Embeddings: feature hashing of character n-grams
# --------------------------------------------------------------------------------------------------------

_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x2FA1F),  # CJK Extensions B.. and Compatibility Supplement
)
_WORD_RE = re.compile(r"\w+")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _features(text: str) -> Iterator[tuple[str, float]]:
    """Yield weighted features of ``text``: words, character trigrams of words, CJK unigrams and bigrams."""
    text = unicodedata.normalize("NFKC", text).lower()
    for match in _WORD_RE.finditer(text):
        word = match.group()
        # Split the word into runs of CJK and non-CJK characters.
        run: list[str] = []
        run_is_cjk: bool | None = None
        runs: list[tuple[bool, str]] = []
        for ch in word:
            c = _is_cjk(ch)
            if run and c != run_is_cjk:
                runs.append((bool(run_is_cjk), "".join(run)))
                run = []
            run.append(ch)
            run_is_cjk = c
        if run:
            runs.append((bool(run_is_cjk), "".join(run)))
        for cjk, piece in runs:
            if cjk:
                for i, ch in enumerate(piece):
                    yield "u:" + ch, 1.0
                    if i + 1 < len(piece):
                        yield "b:" + piece[i : i + 2], 1.0
            else:
                yield "w:" + piece, 1.0
                padded = f" {piece} "
                for i in range(len(padded) - 2):
                    yield "t:" + padded[i : i + 3], 0.5


def _hashed_vector(features: Iterable[tuple[str, float]], dims: int) -> list[float]:
    vec = [0.0] * dims
    for feat, weight in features:
        digest = hashlib.blake2b(feat.encode("utf-8"), digest_size=8).digest()
        h = int.from_bytes(digest, "little")
        sign = 1.0 if (h >> 63) & 1 == 0 else -1.0
        vec[h % dims] += sign * weight
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0.0:
        # Empty / feature-less input: a fixed unit vector so that the result is still unit-norm.
        return _hashed_vector([("empty:", 1.0)], dims)
    return [x / norm for x in vec]


def embed_text(text: str, dims: int = 128) -> list[float]:
    """Return the deterministic unit-norm embedding the fake server computes for ``text``.

    The vector is a signed feature-hashing bag of the lowercased (NFKC-normalised) text's words, the
    character trigrams of each word and, for CJK characters, unigrams and bigrams; then L2-normalised.
    Identical texts give identical vectors and texts sharing words/n-grams get high cosine similarity.
    """
    if dims <= 0:
        raise ValueError("dims must be positive")
    return _hashed_vector(_features(text), dims)


def _embed_tokens(tokens: list[int], dims: int) -> list[float]:
    feats: list[tuple[str, float]] = [(f"tok:{t}", 1.0) for t in tokens]
    feats += [(f"tok2:{a},{b}", 0.5) for a, b in itertools.pairwise(tokens)]
    return _hashed_vector(feats, dims)


# --------------------------------------------------------------------------------------------------------
# Helpers for chat completions
# --------------------------------------------------------------------------------------------------------

_PIECE_RE = re.compile(r"\s*\S{1,4}|\s+")


def _split_stream(text: str) -> list[str]:
    """Split ``text`` into small token-like pieces (at most 4 non-space chars plus leading whitespace)."""
    return _PIECE_RE.findall(text)


def _message_text_len(messages: Any) -> int:
    total = 0
    if not isinstance(messages, list):
        return 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def _usage(prompt_chars: int, completion_chars: int) -> dict[str, int]:
    prompt = max(1, prompt_chars // 4) if prompt_chars else 0
    completion = max(1, completion_chars // 4) if completion_chars else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_STATUS_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon handler threads, quiet errors and tracked client connections."""

    daemon_threads = True
    block_on_close = False
    timeout = 0
    allow_reuse_address = True

    def __init__(self, owner: FakeOpenAI) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        super().__init__(("127.0.0.1", 0), _Handler)

    def serve_until_stopped(self) -> None:
        """Accept connections until the owner's stop event is set and :meth:`wake` is called.

        Unlike ``serve_forever`` this does not poll: it sleeps in ``select`` on the listening socket and a
        wake-up socket, so :meth:`FakeOpenAI.stop` returns within a millisecond or so.
        """
        stopping = self.owner._stopping
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self and not stopping.is_set():
                        self.handle_request()  # ready, so this does not block (timeout is 0)

    def wake(self) -> None:
        """Wake :meth:`serve_until_stopped` so that it notices the stop event."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def server_close(self) -> None:
        """Close the listening socket and the wake-up socket pair."""
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection so that ``stop()`` can close lingering keep-alive connections."""
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget a finished connection, then close it."""
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients disconnecting (timeouts, truncation) are expected in tests."""

    def close_connections(self) -> None:
        """Forcefully shut down every open client connection."""
        with self.conn_lock:
            conns = list(self.connections)
            self.connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


class _Handler(BaseHTTPRequestHandler):
    """Request handler implementing the subset of the OpenAI API described in the module docstring."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    sys_version = ""
    server: _Server

    # ---- plumbing ---------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        """Do not log requests to stderr."""

    def handle(self) -> None:
        """Handle requests, swallowing connection errors caused by clients going away."""
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    @property
    def owner(self) -> FakeOpenAI:
        """The :class:`FakeOpenAI` this handler serves."""
        return self.server.owner

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/v1/"):
            path = path[3:]
        return path

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, close: bool = False
    ) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_raw_json_bytes(self, body: bytes, announced_length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if announced_length is None else announced_length))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self._write_chunk(f"data: {data}\n\n".encode())

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _not_found(self) -> None:
        self._send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error", "not_found"))

    # ---- verbs ------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        """Serve ``/v1/models`` and ``/v1/models/{id}``."""
        route = self._route()
        model = {"id": FAKE_MODEL_ID, "object": "model", "created": 0, "owned_by": "fake-openai"}
        if route == "/models":
            self._send_json(200, {"object": "list", "data": [model]})
        elif route.startswith("/models/"):
            self._send_json(200, {**model, "id": route[len("/models/") :]})
        else:
            self._not_found()

    def do_POST(self) -> None:
        """Dispatch ``/v1/chat/completions`` and ``/v1/embeddings``."""
        route = self._route()
        raw = self._read_body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, _error_body("request body is not valid JSON", "invalid_request_error"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body("request body must be a JSON object", "invalid_request_error"))
            return
        if route == "/chat/completions":
            self._chat(body)
        elif route == "/embeddings":
            self._embeddings(body)
        else:
            self._not_found()

    # ---- chat completions -------------------------------------------------------------------------------

    def _chat(self, body: dict[str, Any]) -> None:
        owner = self.owner
        item = owner._record_chat_and_pop(body)
        stream = bool(body.get("stream"))
        if isinstance(item, Fault):
            if item.kind == "status":
                self._fault_status(item)
                return
            if item.kind == "hang":
                if owner._stopping.wait(item.seconds):
                    self.close_connection = True  # server stopping: drop the connection unanswered
                    return
                reply = item.then if item.then is not None else owner.default_reply
                self._reply(body, reply if reply is not None else _HANG_DEFAULT_REPLY, stream)
                return
            if item.kind == "malformed":
                self._fault_malformed(stream)
                return
            self._fault_truncated(body, stream)
            return
        if item is None:
            self._send_json(500, _error_body("no scripted reply left", "server_error"))
            return
        self._reply(body, item, stream)

    def _fault_status(self, fault: Fault) -> None:
        type_, code = _STATUS_ERROR_TYPES.get(
            fault.status, ("server_error" if fault.status >= 500 else "invalid_request_error", None)
        )
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        message = f"scripted fault: HTTP {fault.status}"
        self._send_json(fault.status, _error_body(message, type_, code), headers=headers)

    def _fault_malformed(self, stream: bool) -> None:
        if stream:
            self._start_stream()
            self._send_event("this is {not json")
            self._send_event("[DONE]")
            self._end_stream()
        else:
            self._send_raw_json_bytes(b"<html>this is not JSON</html>")

    def _fault_truncated(self, body: dict[str, Any], stream: bool) -> None:
        text = "This reply was cut off in the middle of the response."
        if stream:
            self._start_stream()
            chunk = json.dumps(self._chunk(body, {"role": "assistant", "content": text}, None))
            event = f"data: {chunk}\n\n".encode()
            self._write_chunk(event[: len(event) // 2])
        else:
            full = json.dumps(self._completion(body, text)).encode("utf-8")
            self._send_raw_json_bytes(full[: len(full) // 2], announced_length=len(full))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _meta(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{self.owner._next_id():06d}",
            "created": int(time.time()),
            "model": body.get("model") or FAKE_MODEL_ID,
            "system_fingerprint": "fp_fake",
        }

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            **self._meta(body),
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(_message_text_len(body.get("messages")), len(text)),
        }

    def _chunk(
        self,
        body: dict[str, Any],
        delta: dict[str, Any],
        finish: str | None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            **(meta or self._meta(body)),
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _reply(self, body: dict[str, Any], text: str, stream: bool) -> None:
        if not stream:
            self._send_json(200, self._completion(body, text))
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        meta = self._meta(body)
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        self._start_stream()
        self._send_event({**self._chunk(body, {"role": "assistant", "content": ""}, None, meta), **extra})
        for piece in _split_stream(text):
            self._send_event({**self._chunk(body, {"content": piece}, None, meta), **extra})
        self._send_event({**self._chunk(body, {}, "stop", meta), **extra})
        if include_usage:
            usage = _usage(_message_text_len(body.get("messages")), len(text))
            self._send_event({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        self._send_event("[DONE]")
        self._end_stream()

    # ---- embeddings -------------------------------------------------------------------------------------

    def _embeddings(self, body: dict[str, Any]) -> None:
        self.owner._record_embedding(body)
        dims = body.get("dimensions") or self.owner.embedding_dims
        if not isinstance(dims, int) or dims <= 0:
            self._send_json(
                400, _error_body("dimensions must be a positive integer", "invalid_request_error")
            )
            return
        raw = body.get("input")
        inputs: list[Any]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [raw]  # a single token-id list
        elif isinstance(raw, list):
            inputs = raw
        else:
            self._send_json(400, _error_body("'input' must be a string or a list", "invalid_request_error"))
            return
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        n_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                vec = embed_text(item, dims)
                n_tokens += max(1, len(item) // 4)
            elif isinstance(item, list) and all(isinstance(x, int) for x in item):
                vec = _embed_tokens(item, dims)
                n_tokens += len(item)
            else:
                self._send_json(400, _error_body(f"invalid input at index {index}", "invalid_request_error"))
                return
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode("ascii") if as_base64 else vec
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or FAKE_MODEL_ID,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            },
        )


# --------------------------------------------------------------------------------------------------------
# Public server object
# --------------------------------------------------------------------------------------------------------


class FakeOpenAI:
    """Scripted OpenAI-compatible server; a context manager.

    Starts a ``ThreadingHTTPServer`` on 127.0.0.1 with an OS-assigned port in a daemon thread.

    Args:
        replies: scripted chat replies (strings are assistant message contents) or :class:`Fault` objects,
            consumed FIFO, one per ``/v1/chat/completions`` request.
        default_reply: reply used when the queue is empty; if None an empty queue answers HTTP 500.
        embedding_dims: embedding length used when a request does not pass ``dimensions``.

    Attributes:
        requests: every chat completion request body (parsed JSON), in order.
        embedding_requests: every embeddings request body (parsed JSON), in order.
    """

    def __init__(
        self,
        replies: Iterable[str | Fault] = (),
        *,
        default_reply: str | None = None,
        embedding_dims: int = 128,
    ) -> None:
        """Create the server object; nothing listens until :meth:`start` (or ``with``)."""
        self._lock = threading.Lock()
        self._queue: deque[str | Fault] = deque()
        self.push(*replies)
        self.default_reply = default_reply
        self.embedding_dims = embedding_dims
        self.requests: list[dict[str, Any]] = []
        self.embedding_requests: list[dict[str, Any]] = []
        self._ids = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # ---- scripting --------------------------------------------------------------------------------------

    def push(self, *replies: str | Fault) -> None:
        """Append scripted replies (strings or :class:`Fault`) to the queue."""
        for reply in replies:
            if not isinstance(reply, (str, Fault)):
                raise TypeError(f"replies must be str or Fault, got {type(reply).__name__}")
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Number of scripted replies not consumed yet."""
        with self._lock:
            return len(self._queue)

    @property
    def chat_calls(self) -> int:
        """Number of chat completion requests received so far (including faulted ones)."""
        with self._lock:
            return len(self.requests)

    def last_messages(self) -> list[dict[str, Any]]:
        """Return the ``messages`` of the last chat completion request.

        Raises:
            LookupError: if no chat completion request was received yet.
        """
        with self._lock:
            if not self.requests:
                raise LookupError("FakeOpenAI received no chat completion request yet")
            return list(self.requests[-1].get("messages") or [])

    # ---- internals used by the handler ------------------------------------------------------------------

    def _record_chat_and_pop(self, body: dict[str, Any]) -> str | Fault | None:
        with self._lock:
            self.requests.append(body)
            if self._queue:
                return self._queue.popleft()
            return self.default_reply

    def _record_embedding(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.embedding_requests.append(body)

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    # ---- lifecycle --------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the running server, e.g. ``http://127.0.0.1:45123/v1``."""
        if self._base_url is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._base_url

    def start(self) -> FakeOpenAI:
        """Bind to an OS-assigned port on 127.0.0.1 and serve in a daemon thread; return ``self``."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAI is already started")
        self._stopping.clear()
        server = _Server(self)
        port = server.server_address[1]
        self._server = server
        self._base_url = f"http://127.0.0.1:{port}/v1"
        self._thread = threading.Thread(
            target=server.serve_until_stopped, name=f"FakeOpenAI:{port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any hanging handlers and close all connections. Idempotent and quick."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.wake()
        if thread is not None:
            thread.join(timeout=1.0)
        server.server_close()
        server.close_connections()
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Show the address and the queue state."""
        where = self._base_url if self._server is not None else "stopped"
        return f"<FakeOpenAI {where} pending={self.pending} chat_calls={self.chat_calls}>"
